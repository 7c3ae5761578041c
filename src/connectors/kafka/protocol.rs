//! The few Kafka requests librdkafka has no API for, spoken directly over TCP with the
//! `kafka-protocol` crate's generated messages: finding a transaction coordinator,
//! describing a transaction, listing open transactions, and ending a transaction by
//! transactional id, producer id and epoch (`EndTxn`), which is how a transaction that was
//! pre-committed in a checkpoint is committed after a crash (librdkafka cannot resume one).
//!
//! Framing: every request is an `i32` size, a request header and a body; every response an
//! `i32` size, a response header (whose version depends on the API version) and a body.
//! Versions are negotiated per connection with `ApiVersions`.
//!
//! Plaintext only: the recovery path needs the same listener the producer uses; SASL/TLS
//! clusters are refused with a clear error by the sink (see `KafkaSinkConfig`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiVersionsRequest, DescribeTransactionsRequest, EndTxnRequest, FindCoordinatorRequest,
    ListTransactionsRequest, ProducerId, RequestHeader, TransactionalId,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, HeaderVersion, Request, StrBytes,
};

/// Largest response accepted (a `ListTransactions` of a big cluster is well below this).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// `EndTxn` versions 0-4 follow transaction version 1 rules (the epoch is not bumped per
/// transaction), which is what librdkafka's producers use.
const END_TXN_MAX_VERSION: i16 = 4;
const CLIENT_ID: &str = "weir";

/// A failure of a raw protocol exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtoError {
    /// Network or framing trouble; worth retrying against the same or another broker.
    Io(String),
    /// The broker answered with an error code.
    Broker { api: &'static str, code: i16 },
    /// The broker does not support the request at any version this client speaks.
    Unsupported(&'static str),
}

impl ProtoError {
    pub(crate) fn code(&self) -> Option<ResponseError> {
        match self {
            ProtoError::Broker { code, .. } => ResponseError::try_from_code(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Io(e) => f.write_str(e),
            ProtoError::Broker { api, code } => match ResponseError::try_from_code(*code) {
                Some(e) => write!(f, "{api} answered {e:?} ({e})"),
                None => write!(f, "{api} answered error code {code}"),
            },
            ProtoError::Unsupported(api) => write!(
                f,
                "the broker does not support {api} (Kafka 3.0 or newer is needed)"
            ),
        }
    }
}

fn broker_error(api: &'static str, code: i16) -> Result<(), ProtoError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ProtoError::Broker { api, code })
    }
}

/// One connection to one broker, with the API versions it supports.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: String,
    versions: HashMap<i16, (i16, i16)>,
    correlation: i32,
}

impl Conn {
    /// Connects to `addr` (`host:port`) and negotiates API versions.
    pub(crate) fn connect(addr: &str, timeout: Duration) -> Result<Conn, ProtoError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ProtoError::Io(format!("cannot resolve broker `{addr}`: {e}")))?
            .collect();
        let mut last = format!("broker `{addr}` resolves to no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    let set = |r: std::io::Result<()>| {
                        r.map_err(|e| ProtoError::Io(format!("socket option on `{addr}`: {e}")))
                    };
                    set(stream.set_read_timeout(Some(timeout)))?;
                    set(stream.set_write_timeout(Some(timeout)))?;
                    set(stream.set_nodelay(true))?;
                    let mut c = Conn {
                        stream,
                        addr: addr.to_string(),
                        versions: HashMap::new(),
                        correlation: 0,
                    };
                    // ApiVersions v0 is understood by every broker since 0.10.
                    let r = c.call_at(&ApiVersionsRequest::default(), 0)?;
                    broker_error("ApiVersions", r.error_code)?;
                    c.versions = r.keys.iter().map(|k| (k.0, (k.1, k.2))).collect();
                    return Ok(c);
                }
                Err(e) => last = format!("cannot connect to broker `{addr}` ({a}): {e}"),
            }
        }
        Err(ProtoError::Io(last))
    }

    /// The highest version of `R` both sides speak, at most `cap`.
    fn version<R: Request>(&self, api: &'static str, cap: i16) -> Result<i16, ProtoError> {
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or(ProtoError::Unsupported(api))?;
        let v = max.min(cap).min(R::VERSIONS.max);
        if v < min.max(R::VERSIONS.min) {
            return Err(ProtoError::Unsupported(api));
        }
        Ok(v)
    }

    fn call<R: Call>(
        &mut self,
        api: &'static str,
        req: &R,
        cap: i16,
    ) -> Result<R::Answer, ProtoError> {
        let v = self.version::<R>(api, cap)?;
        self.call_at(req, v)
    }

    fn call_at<R: Call>(&mut self, req: &R, version: i16) -> Result<R::Answer, ProtoError> {
        let io = |what: &str, e: String| ProtoError::Io(format!("{what} `{}`: {e}", self.addr));
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut buf = BytesMut::new();
        encode_request_header_into_buffer(&mut buf, &header)
            .and_then(|_| req.encode(&mut buf, version))
            .map_err(|e| io("cannot encode a request to", e.to_string()))?;
        let mut frame = Vec::with_capacity(4 + buf.len());
        frame.extend_from_slice(&(buf.len() as i32).to_be_bytes());
        frame.extend_from_slice(&buf);
        self.stream
            .write_all(&frame)
            .map_err(|e| io("cannot send to broker", e.to_string()))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| io("no answer from broker", e.to_string()))?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            return Err(io(
                "bad response size from broker",
                format!("{size} bytes (expected 0..={MAX_RESPONSE_BYTES})"),
            ));
        }
        let mut body = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| io("truncated answer from broker", e.to_string()))?;
        let (correlation, r) = decode_response::<R>(&body, version)
            .map_err(|e| io("cannot decode the answer from broker", e))?;
        if correlation != self.correlation {
            return Err(io(
                "out-of-order answer from broker",
                format!(
                    "correlation id {correlation} (expected {})",
                    self.correlation
                ),
            ));
        }
        Ok(r)
    }
}

/// A transaction's state as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnDescription {
    /// `Empty`, `Ongoing`, `PrepareCommit`, `PrepareAbort`, `CompleteCommit`,
    /// `CompleteAbort`, `Dead`, `PrepareEpochFence`.
    pub(crate) state: String,
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

/// A transaction listed by `ListTransactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedTxn {
    pub(crate) id: String,
    pub(crate) producer_id: i64,
    pub(crate) state: String,
}

/// Transaction requests against a cluster, with retries within a deadline.
pub(crate) struct TxnClient {
    bootstrap: Vec<String>,
    timeout: Duration,
    /// Coordinator address per transactional id (refreshed on NOT_COORDINATOR).
    coordinators: HashMap<String, String>,
    conns: HashMap<String, Conn>,
}

/// Backoff between retries of retriable answers.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

impl TxnClient {
    /// `brokers`: the bootstrap list (`host:port,host:port`); `timeout`: per request.
    pub(crate) fn new(brokers: &str, timeout: Duration) -> TxnClient {
        TxnClient {
            bootstrap: brokers
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            timeout,
            coordinators: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    fn conn(&mut self, addr: &str) -> Result<&mut Conn, ProtoError> {
        if !self.conns.contains_key(addr) {
            let c = Conn::connect(addr, self.timeout)?;
            self.conns.insert(addr.to_string(), c);
        }
        Ok(self.conns.get_mut(addr).expect("just inserted"))
    }

    /// Runs `f` against any bootstrap broker that answers.
    fn any_broker<T>(
        &mut self,
        mut f: impl FnMut(&mut Conn) -> Result<T, ProtoError>,
    ) -> Result<T, ProtoError> {
        let mut last = ProtoError::Io("no bootstrap brokers configured".into());
        for addr in self.bootstrap.clone() {
            match self.conn(&addr).and_then(&mut f) {
                Ok(v) => return Ok(v),
                Err(e @ ProtoError::Io(_)) => {
                    self.conns.remove(&addr);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The address of the coordinator of transactional id `tid`.
    fn coordinator(&mut self, tid: &str) -> Result<String, ProtoError> {
        if let Some(a) = self.coordinators.get(tid) {
            return Ok(a.clone());
        }
        let key = StrBytes::from_string(tid.to_string());
        let addr = self.any_broker(|c| {
            let v = c.version::<FindCoordinatorRequest>("FindCoordinator", 4)?;
            let mut req = FindCoordinatorRequest::default().with_key_type(1);
            if v >= 4 {
                req = req.with_coordinator_keys(vec![key.clone()]);
            } else {
                req = req.with_key(key.clone());
            }
            let r = c.call_at(&req, v)?;
            broker_error("FindCoordinator", r.error_code)?;
            Ok(format!("{}:{}", r.host, r.port))
        })?;
        self.coordinators.insert(tid.to_string(), addr.clone());
        Ok(addr)
    }

    /// Runs `f` on the coordinator of `tid`, retrying retriable answers until `deadline`:
    /// connection trouble and coordinator moves (find it again), loading and concurrent
    /// operations (back off). Other broker errors are returned at once.
    fn on_coordinator<T>(
        &mut self,
        tid: &str,
        deadline: Instant,
        mut f: impl FnMut(&mut Conn) -> Result<T, ProtoError>,
    ) -> Result<T, ProtoError> {
        loop {
            let r = match self.coordinator(tid) {
                Ok(addr) => {
                    let r = self.conn(&addr).and_then(&mut f);
                    if matches!(r, Err(ProtoError::Io(_))) {
                        self.conns.remove(&addr);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            let e = match r {
                Ok(v) => {
                    // Every transaction has an id of its own: keeping its coordinator would
                    // only grow the map.
                    self.coordinators.remove(tid);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let retry = match (&e, e.code()) {
                (ProtoError::Io(_), _) => {
                    self.coordinators.remove(tid);
                    true
                }
                (
                    _,
                    Some(ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable),
                ) => {
                    self.coordinators.remove(tid);
                    true
                }
                (
                    _,
                    Some(
                        ResponseError::CoordinatorLoadInProgress
                        | ResponseError::ConcurrentTransactions,
                    ),
                ) => true,
                _ => false,
            };
            if !retry || Instant::now() + RETRY_BACKOFF > deadline {
                return Err(e);
            }
            tracing::debug!(transactional_id = tid, error = %e, "retrying a transaction request");
            std::thread::sleep(RETRY_BACKOFF);
        }
    }

    /// `EndTxn`: commits (or aborts) the transaction of `tid` opened by producer
    /// `(producer_id, epoch)`. Committing one that is already committed succeeds (a retried
    /// commit); one that timed out or was fenced fails with `PRODUCER_FENCED` or
    /// `INVALID_PRODUCER_EPOCH`.
    pub(crate) fn end_txn(
        &mut self,
        tid: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        deadline: Instant,
    ) -> Result<(), ProtoError> {
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(tid.to_string())))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        self.on_coordinator(tid, deadline, |c| {
            let code = c.call("EndTxn", &req, END_TXN_MAX_VERSION)?;
            broker_error("EndTxn", code)
        })
    }

    /// `DescribeTransactions` of one transactional id.
    pub(crate) fn describe(
        &mut self,
        tid: &str,
        deadline: Instant,
    ) -> Result<TxnDescription, ProtoError> {
        let req =
            DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(
                StrBytes::from_string(tid.to_string()),
            )]);
        self.on_coordinator(tid, deadline, |c| {
            let (code, d) = c.call("DescribeTransactions", &req, 0)?;
            broker_error("DescribeTransactions", code)?;
            Ok(d)
        })
    }

    /// Every transaction in state `Ongoing` on the brokers `brokers` (each broker lists the
    /// transactions it coordinates, so pass all of them). Connection trouble and brokers still
    /// loading their transaction state are retried until `deadline`.
    pub(crate) fn list_ongoing(
        &mut self,
        brokers: &[String],
        deadline: Instant,
    ) -> Result<Vec<ListedTxn>, ProtoError> {
        let req = ListTransactionsRequest::default()
            .with_state_filters(vec![StrBytes::from_static_str("Ongoing")])
            .with_duration_filter(-1);
        let mut out = Vec::new();
        for addr in brokers {
            loop {
                let r = self
                    .conn(addr)
                    .and_then(|c| c.call("ListTransactions", &req, 1))
                    .and_then(|(code, listed)| {
                        broker_error("ListTransactions", code).map(|_| listed)
                    });
                let e = match r {
                    Ok(listed) => {
                        out.extend(listed);
                        break;
                    }
                    Err(e) => e,
                };
                if matches!(e, ProtoError::Io(_)) {
                    self.conns.remove(addr);
                }
                let retry = matches!(e, ProtoError::Io(_))
                    || matches!(
                        e.code(),
                        Some(
                            ResponseError::CoordinatorLoadInProgress
                                | ResponseError::CoordinatorNotAvailable
                        )
                    );
                if !retry || Instant::now() + RETRY_BACKOFF > deadline {
                    return Err(e);
                }
                tracing::debug!(broker = %addr, error = %e, "retrying ListTransactions");
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Answers. The `kafka-protocol` crate encodes the requests; the five answers are decoded here
// with a bounded reader, because the crate's decoders reserve memory for the element counts
// they read before checking them against the bytes left (a 30-byte answer could ask for a
// 60 GB allocation and abort the process; found by `decoding_any_answer_is_total`). Every
// count and length below is checked against the bytes that remain.

/// A bounded cursor over an answer.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err(format!(
                "answer truncated: {n} more bytes expected, {} left",
                self.b.len()
            ));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..5 {
            let byte = self.take(1)?[0];
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 5 bytes".into())
    }
    /// A length of a string or an array: `None` for null; never more than the bytes left
    /// (every element takes at least one byte).
    fn len(&mut self, flexible: bool) -> Result<Option<usize>, String> {
        let n: i64 = if flexible {
            self.uvarint()? as i64 - 1
        } else {
            i64::from(self.i32()?)
        };
        if n < 0 {
            return Ok(None);
        }
        if n as usize > self.b.len() {
            return Err(format!(
                "length {n} is more than the {} bytes left",
                self.b.len()
            ));
        }
        Ok(Some(n as usize))
    }
    /// A (nullable) string; non-flexible strings have an `i16` length.
    fn string(&mut self, flexible: bool) -> Result<String, String> {
        let n = if flexible {
            self.len(true)?
        } else {
            let n = self.i16()?;
            (n >= 0).then_some(n as usize)
        };
        match n {
            None => Ok(String::new()),
            Some(n) => Ok(String::from_utf8_lossy(self.take(n)?).into_owned()),
        }
    }
    fn count(&mut self, flexible: bool) -> Result<usize, String> {
        Ok(self.len(flexible)?.unwrap_or(0))
    }
    /// Skips tagged fields (flexible versions).
    fn tags(&mut self, flexible: bool) -> Result<(), String> {
        if !flexible {
            return Ok(());
        }
        for _ in 0..self.count_tags()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
    fn count_tags(&mut self) -> Result<u64, String> {
        let n = self.uvarint()?;
        if n as usize > self.b.len() {
            return Err(format!("{n} tagged fields in {} bytes", self.b.len()));
        }
        Ok(n)
    }
}

/// A request whose answer this module decodes.
trait Call: Request {
    type Answer;
    fn answer(r: &mut Reader<'_>, version: i16, flexible: bool) -> Result<Self::Answer, String>;
}

struct ApiVersionsAnswer {
    error_code: i16,
    /// `(api key, min version, max version)`.
    keys: Vec<(i16, i16, i16)>,
}

impl Call for ApiVersionsRequest {
    type Answer = ApiVersionsAnswer;
    fn answer(r: &mut Reader<'_>, version: i16, _: bool) -> Result<ApiVersionsAnswer, String> {
        // The answer's body is flexible from version 3 even though its header never is.
        let flexible = version >= 3;
        let error_code = r.i16()?;
        let n = r.count(flexible)?;
        // Not `with_capacity(n)`: a count is bounded by the bytes left, not by the memory an
        // element takes.
        let mut keys = Vec::new();
        for _ in 0..n {
            keys.push((r.i16()?, r.i16()?, r.i16()?));
            r.tags(flexible)?;
        }
        Ok(ApiVersionsAnswer { error_code, keys })
    }
}

struct CoordinatorAnswer {
    error_code: i16,
    host: String,
    port: i32,
}

impl Call for FindCoordinatorRequest {
    type Answer = CoordinatorAnswer;
    fn answer(r: &mut Reader<'_>, v: i16, flex: bool) -> Result<CoordinatorAnswer, String> {
        if v >= 1 {
            r.i32()?; // throttle time
        }
        if v >= 4 {
            // One entry per key asked for; this client asks for one.
            if r.count(flex)? == 0 {
                return Err("FindCoordinator answered no coordinator".into());
            }
            r.string(flex)?; // key
            r.i32()?; // node id
            let host = r.string(flex)?;
            let port = r.i32()?;
            let error_code = r.i16()?;
            return Ok(CoordinatorAnswer {
                error_code,
                host,
                port,
            });
        }
        let error_code = r.i16()?;
        if v >= 1 {
            r.string(flex)?; // error message
        }
        r.i32()?; // node id
        let host = r.string(flex)?;
        let port = r.i32()?;
        Ok(CoordinatorAnswer {
            error_code,
            host,
            port,
        })
    }
}

impl Call for EndTxnRequest {
    /// The error code.
    type Answer = i16;
    fn answer(r: &mut Reader<'_>, _: i16, _: bool) -> Result<i16, String> {
        r.i32()?; // throttle time
        r.i16()
    }
}

impl Call for DescribeTransactionsRequest {
    /// The first (only) transaction's error code and description.
    type Answer = (i16, TxnDescription);
    fn answer(r: &mut Reader<'_>, _: i16, flex: bool) -> Result<Self::Answer, String> {
        r.i32()?; // throttle time
        if r.count(flex)? == 0 {
            return Err("DescribeTransactions answered no transaction".into());
        }
        let error_code = r.i16()?;
        r.string(flex)?; // transactional id
        let state = r.string(flex)?;
        r.i32()?; // timeout
        r.i64()?; // start time
        let producer_id = r.i64()?;
        let epoch = r.i16()?;
        Ok((
            error_code,
            TxnDescription {
                state,
                producer_id,
                epoch,
            },
        ))
    }
}

impl Call for ListTransactionsRequest {
    type Answer = (i16, Vec<ListedTxn>);
    fn answer(r: &mut Reader<'_>, _: i16, flex: bool) -> Result<Self::Answer, String> {
        r.i32()?; // throttle time
        let error_code = r.i16()?;
        for _ in 0..r.count(flex)? {
            r.string(flex)?; // unknown state filter
        }
        let n = r.count(flex)?;
        let mut out = Vec::new();
        for _ in 0..n {
            let id = r.string(flex)?;
            let producer_id = r.i64()?;
            let state = r.string(flex)?;
            r.tags(flex)?;
            out.push(ListedTxn {
                id,
                producer_id,
                state,
            });
        }
        Ok((error_code, out))
    }
}

/// Decodes an answer frame's body (header, then body of `version`): total on any bytes.
fn decode_response<R: Call>(body: &[u8], version: i16) -> Result<(i32, R::Answer), String> {
    let mut r = Reader { b: body };
    let flexible = R::Response::header_version(version) >= 1;
    let correlation = r.i32()?;
    r.tags(flexible)?;
    let a = R::answer(&mut r, version, flexible)?;
    Ok((correlation, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_broker_is_an_io_error_naming_it() {
        // Port 1 on loopback: nothing listens there.
        let mut c = TxnClient::new("127.0.0.1:1", Duration::from_millis(200));
        let e = c
            .end_txn("t", 1, 0, true, Instant::now() + Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(e, ProtoError::Io(_)), "{e:?}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }

    proptest::proptest! {
        // Broker answers are untrusted bytes: decoding any of them is an error or a value,
        // never a panic (or an allocation that aborts the process).
        #[test]
        fn decoding_any_answer_is_total(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), version in 0i16..6) {
            let _ = decode_response::<EndTxnRequest>(&body, version.min(4));
            let _ = decode_response::<FindCoordinatorRequest>(&body, version.min(4));
            let _ = decode_response::<DescribeTransactionsRequest>(&body, 0);
            let _ = decode_response::<ListTransactionsRequest>(&body, version.min(1));
            let _ = decode_response::<ApiVersionsRequest>(&body, version.min(3));
        }
    }

    /// Encodes `resp` as the crate's broker side would answer `R` at `version`.
    fn frame<R: Request>(resp: &R::Response, version: i16) -> Vec<u8> {
        use kafka_protocol::messages::ResponseHeader;
        use kafka_protocol::protocol::Encodable;
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, R::Response::header_version(version))
            .unwrap();
        resp.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    #[test]
    fn answers_decode_as_the_kafka_schemas_encode_them() {
        use kafka_protocol::messages::{
            api_versions_response::ApiVersion, describe_transactions_response::TransactionState,
            find_coordinator_response::Coordinator, list_transactions_response,
            ApiVersionsResponse, DescribeTransactionsResponse, EndTxnResponse,
            FindCoordinatorResponse, ListTransactionsResponse,
        };
        for v in 0..=3 {
            let r = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
                .with_api_key(26)
                .with_min_version(1)
                .with_max_version(5)]);
            let (c, a) =
                decode_response::<ApiVersionsRequest>(&frame::<ApiVersionsRequest>(&r, v), v)
                    .unwrap();
            assert_eq!(
                (c, a.error_code, a.keys),
                (7, 0, vec![(26, 1, 5)]),
                "ApiVersions v{v}"
            );
        }
        for v in 0..=5 {
            let r = if v < 4 {
                FindCoordinatorResponse::default()
                    .with_error_code(15)
                    .with_host(StrBytes::from_static_str("b1"))
                    .with_port(9092)
            } else {
                FindCoordinatorResponse::default().with_coordinators(vec![Coordinator::default()
                    .with_error_code(15)
                    .with_host(StrBytes::from_static_str("b1"))
                    .with_port(9092)])
            };
            let (_, a) = decode_response::<FindCoordinatorRequest>(
                &frame::<FindCoordinatorRequest>(&r, v),
                v,
            )
            .unwrap();
            assert_eq!(
                (a.error_code, a.host.as_str(), a.port),
                (15, "b1", 9092),
                "FindCoordinator v{v}"
            );
        }
        for v in 0..=4 {
            let r = EndTxnResponse::default().with_error_code(51);
            let (_, code) =
                decode_response::<EndTxnRequest>(&frame::<EndTxnRequest>(&r, v), v).unwrap();
            assert_eq!(code, 51, "EndTxn v{v}");
        }
        let r = DescribeTransactionsResponse::default().with_transaction_states(vec![
            TransactionState::default()
                .with_transaction_state(StrBytes::from_static_str("Ongoing"))
                .with_producer_id(ProducerId(42))
                .with_producer_epoch(3),
        ]);
        let (_, (code, d)) = decode_response::<DescribeTransactionsRequest>(
            &frame::<DescribeTransactionsRequest>(&r, 0),
            0,
        )
        .unwrap();
        assert_eq!(
            (code, d.state.as_str(), d.producer_id, d.epoch),
            (0, "Ongoing", 42, 3)
        );
        for v in 0..=1 {
            let r = ListTransactionsResponse::default().with_transaction_states(vec![
                list_transactions_response::TransactionState::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_static_str("weir-a-0-4")))
                    .with_producer_id(ProducerId(9))
                    .with_transaction_state(StrBytes::from_static_str("Ongoing")),
            ]);
            let (_, (code, l)) = decode_response::<ListTransactionsRequest>(
                &frame::<ListTransactionsRequest>(&r, v),
                v,
            )
            .unwrap();
            assert_eq!(code, 0);
            assert_eq!(
                l,
                vec![ListedTxn {
                    id: "weir-a-0-4".into(),
                    producer_id: 9,
                    state: "Ongoing".into()
                }],
                "ListTransactions v{v}"
            );
        }
    }

    #[test]
    fn broker_errors_are_named() {
        let e = ProtoError::Broker {
            api: "EndTxn",
            code: 90,
        };
        assert_eq!(e.code(), Some(ResponseError::ProducerFenced));
        assert!(e.to_string().contains("ProducerFenced"), "{e}");
    }
}
