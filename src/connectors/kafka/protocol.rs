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

use bytes::{Buf, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiVersionsRequest, DescribeTransactionsRequest, EndTxnRequest, FindCoordinatorRequest,
    ListTransactionsRequest, ProducerId, RequestHeader, ResponseHeader, TransactionalId,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, Decodable, HeaderVersion, Request, StrBytes,
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
                    c.versions = r
                        .api_keys
                        .iter()
                        .map(|k| (k.api_key, (k.min_version, k.max_version)))
                        .collect();
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

    fn call<R: Request>(
        &mut self,
        api: &'static str,
        req: &R,
        cap: i16,
    ) -> Result<R::Response, ProtoError> {
        let v = self.version::<R>(api, cap)?;
        self.call_at(req, v)
    }

    fn call_at<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, ProtoError> {
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
        let mut body = bytes::Bytes::from(body);
        let rh = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| io("cannot decode a response header from", e.to_string()))?;
        if rh.correlation_id != self.correlation {
            return Err(io(
                "out-of-order answer from broker",
                format!(
                    "correlation id {} (expected {})",
                    rh.correlation_id, self.correlation
                ),
            ));
        }
        let r = R::Response::decode(&mut body, version)
            .map_err(|e| io("cannot decode a response from", e.to_string()))?;
        if body.has_remaining() {
            tracing::debug!(broker = %self.addr, bytes = body.remaining(), "response had trailing bytes");
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
            let (code, host, port) = if v >= 4 {
                let co = r.coordinators.first().ok_or_else(|| {
                    ProtoError::Io("FindCoordinator answered no coordinator".into())
                })?;
                (co.error_code, co.host.to_string(), co.port)
            } else {
                (r.error_code, r.host.to_string(), r.port)
            };
            broker_error("FindCoordinator", code)?;
            Ok(format!("{host}:{port}"))
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
                Ok(v) => return Ok(v),
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
            let r = c.call("EndTxn", &req, END_TXN_MAX_VERSION)?;
            broker_error("EndTxn", r.error_code)
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
            let r = c.call("DescribeTransactions", &req, 0)?;
            let s = r.transaction_states.first().ok_or_else(|| {
                ProtoError::Io("DescribeTransactions answered no transaction".into())
            })?;
            broker_error("DescribeTransactions", s.error_code)?;
            Ok(TxnDescription {
                state: s.transaction_state.to_string(),
                producer_id: s.producer_id.0,
                epoch: s.producer_epoch,
            })
        })
    }

    /// Every transaction in state `Ongoing` on the brokers `brokers` (each broker lists the
    /// transactions it coordinates, so pass all of them).
    pub(crate) fn list_ongoing(
        &mut self,
        brokers: &[String],
    ) -> Result<Vec<ListedTxn>, ProtoError> {
        let req = ListTransactionsRequest::default()
            .with_state_filters(vec![StrBytes::from_static_str("Ongoing")])
            .with_duration_filter(-1);
        let mut out = Vec::new();
        for addr in brokers {
            let r = self
                .conn(addr)
                .and_then(|c| c.call("ListTransactions", &req, 1));
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    self.conns.remove(addr);
                    return Err(e);
                }
            };
            broker_error("ListTransactions", r.error_code)?;
            out.extend(r.transaction_states.into_iter().map(|t| ListedTxn {
                id: t.transactional_id.to_string(),
                producer_id: t.producer_id.0,
                state: t.transaction_state.to_string(),
            }));
        }
        Ok(out)
    }
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
