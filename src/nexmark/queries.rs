//! The Nexmark queries, written with Weir's public API as a user would: the SQL of the
//! reference (nexmark/nexmark, Flink flavour) turned into dataflows of `map`, `filter`,
//! `key_by`, windows and keyed process functions with keyed state and event-time timers.
//!
//! Every query reads the events with their event time and watermarks 4 s behind the largest
//! time seen (the reference's `WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND`).
//! Queries whose SQL result is an updating table (q4, q9, q18, q19) emit upserts: each
//! output row replaces the earlier row with the same key (documented per query); the others
//! emit append-only rows. Joins keep state only as long as a matching row can still arrive:
//! a bid older than the watermark can no longer meet an auction that started before it, and
//! an auction is complete once the watermark passed its expiry (the results are those of the
//! SQL's regular joins, whose state Flink keeps forever).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{Auction, Bid, Event, Str};
use crate::{
    BoxError, DataStream, KeyedContext, KeyedProcessFunction, ListState, OpenContext, Timestamp,
    ValueState, WindowAssigner,
};

/// The queries of the suite.
pub const QUERIES: [&str; 16] = [
    "q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q9", "q11", "q12", "q18", "q19", "q20", "q21",
    "q22",
];

/// Ten seconds, the window size of q7, q8, q11 (gap) and q12.
const TEN_S: i64 = 10_000;

/// The events with event time and watermarks (4 s behind).
pub fn with_event_time(events: &DataStream<Event>) -> DataStream<Event> {
    events.with_timestamps(Event::date_time, Duration::from_secs(4))
}

fn bids(events: &DataStream<Event>) -> DataStream<Bid> {
    events.flat_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// q0, pass-through: every bid's `auction, bidder, price, dateTime, extra`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Q0 {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub date_time: Timestamp,
    pub extra: Str,
}

pub fn q0(events: &DataStream<Event>) -> DataStream<Q0> {
    bids(events).map(|b| Q0 {
        auction: b.auction,
        bidder: b.bidder,
        price: b.price,
        date_time: b.date_time,
        extra: b.extra,
    })
}

/// A `DECIMAL(23, 3)`: the value times 1000, written as decimal text (`"112.272"`; output
/// only, so it is not read back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Milli(pub i64);

impl Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sign = if self.0 < 0 { "-" } else { "" };
        let v = self.0.unsigned_abs();
        s.collect_str(&format_args!("{sign}{}.{:03}", v / 1000, v % 1000))
    }
}

/// q1, currency conversion: q0 with `price` in euros (`0.908 * price`, exact).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Q1 {
    pub auction: i64,
    pub bidder: i64,
    pub price: Milli,
    pub date_time: Timestamp,
    pub extra: Str,
}

pub fn q1(events: &DataStream<Event>) -> DataStream<Q1> {
    bids(events).map(|b| Q1 {
        auction: b.auction,
        bidder: b.bidder,
        price: Milli(b.price * 908),
        date_time: b.date_time,
        extra: b.extra,
    })
}

/// q2, selection: `auction, price` of the bids on auctions whose id is a multiple of 123.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q2 {
    pub auction: i64,
    pub price: i64,
}

pub fn q2(events: &DataStream<Event>) -> DataStream<Q2> {
    events.flat_map(|e| match e {
        Event::Bid(b) if b.auction % 123 == 0 => Some(Q2 {
            auction: b.auction,
            price: b.price,
        }),
        _ => None,
    })
}

/// q3, local item suggestion: sellers in Oregon, Idaho or California of category-10
/// auctions (`name, city, state` of the person, `id` of the auction).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q3 {
    pub name: Str,
    pub city: Str,
    pub state: Str,
    pub id: i64,
}

/// One side of a [`LookupJoin`]: the key's one row (`None`: it exists but does not
/// qualify), or a row that looks it up.
#[derive(Debug, Clone)]
enum Side<L, R> {
    One(Option<L>),
    Many(R),
}

/// A join of a key's single row (a person, an auction: ids are unique) with the rows that
/// reference it, in either arrival order: rows that arrive before it wait in a list; once it
/// arrived, they join at once (or are dropped when it does not qualify).
struct LookupJoin<L, R, O> {
    join: fn(&L, R) -> O,
    one: Option<ValueState<Option<L>>>,
    waiting: Option<ListState<R>>,
}

impl<L, R, O> Clone for LookupJoin<L, R, O> {
    fn clone(&self) -> Self {
        LookupJoin {
            join: self.join,
            one: self.one.clone(),
            waiting: self.waiting.clone(),
        }
    }
}

impl<L, R, O> LookupJoin<L, R, O> {
    fn new(join: fn(&L, R) -> O) -> Self {
        LookupJoin {
            join,
            one: None,
            waiting: None,
        }
    }
}

impl<L: crate::StateData, R: crate::StateData, O: 'static> KeyedProcessFunction<i64, Side<L, R>, O>
    for LookupJoin<L, R, O>
{
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.one = Some(ctx.value_state("one"));
        self.waiting = Some(ctx.list_state("waiting"));
        Ok(())
    }

    fn process(
        &mut self,
        value: Side<L, R>,
        ctx: &mut KeyedContext<'_, i64, O>,
    ) -> Result<(), BoxError> {
        let (one, waiting) = (self.one.as_ref().unwrap(), self.waiting.as_ref().unwrap());
        match value {
            Side::One(row) => {
                let early = waiting.take(ctx);
                if let Some(l) = &row {
                    for r in early {
                        ctx.emit((self.join)(l, r));
                    }
                }
                one.set(ctx, row);
            }
            Side::Many(r) => match one.get(ctx) {
                Some(Some(l)) => {
                    let out = (self.join)(l, r);
                    ctx.emit(out);
                }
                Some(None) => {}
                None => waiting.push(ctx, r),
            },
        }
        Ok(())
    }
}

pub fn q3(events: &DataStream<Event>) -> DataStream<Q3> {
    events
        .flat_map(|e| match e {
            Event::Person(p) => {
                let home = matches!(&*p.state, "OR" | "ID" | "CA");
                Some((p.id, Side::One(home.then_some((p.name, p.city, p.state)))))
            }
            Event::Auction(a) if a.category == 10 => Some((a.seller, Side::Many(a.id))),
            _ => None,
        })
        .key_by(|(id, _): &(i64, Side<(Str, Str, Str), i64>)| *id)
        .process(
            "q3-join",
            Unkey(LookupJoin::new(
                |(name, city, state): &(Str, Str, Str), id| Q3 {
                    name: name.clone(),
                    city: city.clone(),
                    state: state.clone(),
                    id,
                },
            )),
        )
}

/// Runs a keyed process function on `(key, value)` pairs, passing it only the value.
#[derive(Clone)]
struct Unkey<F>(F);

impl<K, I, O, F: KeyedProcessFunction<K, I, O>> KeyedProcessFunction<K, (K, I), O> for Unkey<F> {
    fn open(&mut self, ctx: &mut OpenContext<'_, K>) -> Result<(), BoxError> {
        self.0.open(ctx)
    }
    fn process(&mut self, value: (K, I), ctx: &mut KeyedContext<'_, K, O>) -> Result<(), BoxError> {
        self.0.process(value.1, ctx)
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, K, O>) -> Result<(), BoxError> {
        self.0.on_timer(ctx)
    }
}

/// An auction or a bid, keyed by the auction's id (the joins of q4 and q9).
#[derive(Debug, Clone)]
enum AuctionOrBid {
    Auction(Auction),
    Bid(Bid),
}

fn auctions_and_bids(events: &DataStream<Event>) -> DataStream<(i64, AuctionOrBid)> {
    events.flat_map(|e| match e {
        Event::Auction(a) => Some((a.id, AuctionOrBid::Auction(a))),
        Event::Bid(b) => Some((b.auction, AuctionOrBid::Bid(b))),
        Event::Person(_) => None,
    })
}

/// The interval join of q4 and q9: per auction, the bids made while it was open
/// (`auction.dateTime <= bid.dateTime <= auction.expires`), reduced to the best one by
/// `better`; emits `(auction, best bid)` whenever the best bid changes. Bids that arrive
/// before their auction wait until the watermark passes them (by then the auction, which
/// starts no later than the bid, has arrived); an auction is dropped once the watermark
/// passes its expiry (no bid of its interval can follow).
///
/// The auction and its best bid live in two states: an auction never changes once it has
/// arrived, while its best bid changes with every better bid, and an incremental checkpoint
/// writes a changed key's whole value. Kept together, every new best bid would write the
/// auction again (its strings make it about three times the size of a bid).
#[derive(Clone)]
struct WinningBid {
    better: fn(&Bid, &Bid) -> bool,
    auction: Option<ValueState<Auction>>,
    best: Option<ValueState<Bid>>,
    waiting: Option<ListState<Bid>>,
}

impl WinningBid {
    fn new(better: fn(&Bid, &Bid) -> bool) -> Self {
        WinningBid {
            better,
            auction: None,
            best: None,
            waiting: None,
        }
    }

    /// Whether `bid` beats `best` for auction `a` (and was made while it was open).
    fn beats(&self, a: &Auction, best: Option<&Bid>, bid: &Bid) -> bool {
        if bid.date_time < a.date_time || bid.date_time > a.expires {
            return false;
        }
        best.is_none_or(|b| (self.better)(bid, b))
    }
}

impl KeyedProcessFunction<i64, AuctionOrBid, (Auction, Bid)> for WinningBid {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.auction = Some(ctx.value_state("auction"));
        self.best = Some(ctx.value_state("best-bid"));
        self.waiting = Some(ctx.list_state("bids"));
        Ok(())
    }

    fn process(
        &mut self,
        value: AuctionOrBid,
        ctx: &mut KeyedContext<'_, i64, (Auction, Bid)>,
    ) -> Result<(), BoxError> {
        let (auction, best, waiting) = (
            self.auction.as_ref().unwrap(),
            self.best.as_ref().unwrap(),
            self.waiting.as_ref().unwrap(),
        );
        match value {
            AuctionOrBid::Auction(a) => {
                ctx.register_event_time_timer(a.expires);
                let mut winner: Option<Bid> = None;
                for bid in waiting.take(ctx) {
                    if self.beats(&a, winner.as_ref(), &bid) {
                        winner = Some(bid);
                    }
                }
                if let Some(w) = winner {
                    ctx.emit((a.clone(), w.clone()));
                    best.set(ctx, w);
                }
                auction.set(ctx, a);
            }
            AuctionOrBid::Bid(bid) => {
                if let Some(a) = auction.get(ctx) {
                    if self.beats(a, best.get(ctx), &bid) {
                        let row = (a.clone(), bid.clone());
                        best.set(ctx, bid);
                        ctx.emit(row);
                    }
                } else if bid.date_time > ctx.watermark() {
                    ctx.register_event_time_timer(bid.date_time);
                    waiting.push(ctx, bid);
                }
            }
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut KeyedContext<'_, i64, (Auction, Bid)>,
    ) -> Result<(), BoxError> {
        let (auction, best, waiting) = (
            self.auction.as_ref().unwrap(),
            self.best.as_ref().unwrap(),
            self.waiting.as_ref().unwrap(),
        );
        let wm = ctx.watermark();
        if auction.get(ctx).is_some_and(|a| a.expires <= wm) {
            auction.clear(ctx);
            best.clear(ctx);
        }
        if !waiting.get(ctx).is_empty() {
            let keep: Vec<Bid> = waiting
                .take(ctx)
                .into_iter()
                .filter(|b| b.date_time > wm)
                .collect();
            for b in keep {
                waiting.push(ctx, b);
            }
        }
        Ok(())
    }
}

/// q4, average winning price per category: upserts keyed by `category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q4 {
    pub category: i64,
    /// `AVG(final)` over the category's auctions with a bid (integer, as Flink's `AVG(BIGINT)`).
    pub avg: i64,
}

/// Per category: the sum and count of the auctions' current maximum prices.
#[derive(Clone, Default)]
struct Q4Avg {
    sums: Option<ValueState<(i64, i64)>>,
}

impl KeyedProcessFunction<i64, (i64, Option<i64>, i64), Q4> for Q4Avg {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.sums = Some(ctx.value_state("sum-count"));
        Ok(())
    }

    fn process(
        &mut self,
        (_, old, new): (i64, Option<i64>, i64),
        ctx: &mut KeyedContext<'_, i64, Q4>,
    ) -> Result<(), BoxError> {
        let sums = self.sums.as_ref().unwrap();
        let (mut sum, mut count) = sums.get(ctx).copied().unwrap_or((0, 0));
        sum += new - old.unwrap_or(0);
        count += i64::from(old.is_none());
        sums.set(ctx, (sum, count));
        let category = *ctx.key();
        ctx.emit(Q4 {
            category,
            avg: sum / count,
        });
        Ok(())
    }
}

pub fn q4(events: &DataStream<Event>) -> DataStream<Q4> {
    // Only ids, category, times and prices matter here: the join keeps auctions and bids
    // without their strings (a few dozen bytes each instead of ~600 and ~100 to checkpoint).
    // The previous maximum travels with each new one, so the average can replace it.
    events
        .flat_map(|e| match e {
            Event::Auction(a) => Some((
                a.id,
                AuctionOrBid::Auction(Auction {
                    item_name: String::new(),
                    description: String::new(),
                    extra: Str::Borrowed(""),
                    ..a
                }),
            )),
            Event::Bid(b) => Some((
                b.auction,
                AuctionOrBid::Bid(Bid {
                    channel: Str::Borrowed(""),
                    url: Str::Borrowed(""),
                    extra: Str::Borrowed(""),
                    ..b
                }),
            )),
            Event::Person(_) => None,
        })
        .key_by(|(id, _): &(i64, AuctionOrBid)| *id)
        .process(
            "q4-max",
            Unkey(WinningBid::new(|new, best| new.price > best.price)),
        )
        .key_by(|(a, _): &(Auction, Bid)| a.id)
        .process("q4-previous", Previous::default())
        .key_by(|(category, _, _): &(i64, Option<i64>, i64)| *category)
        .process("q4-avg", Q4Avg::default())
}

/// Per auction: remembers the last maximum price, to emit `(category, previous, new)`.
#[derive(Clone, Default)]
struct Previous {
    last: Option<ValueState<i64>>,
}

impl KeyedProcessFunction<i64, (Auction, Bid), (i64, Option<i64>, i64)> for Previous {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.last = Some(ctx.value_state("max"));
        Ok(())
    }

    fn process(
        &mut self,
        (a, b): (Auction, Bid),
        ctx: &mut KeyedContext<'_, i64, (i64, Option<i64>, i64)>,
    ) -> Result<(), BoxError> {
        let last = self.last.as_ref().unwrap();
        let old = last.get(ctx).copied();
        last.set(ctx, b.price);
        // The auction's state is not needed once it expired; its maximum is final then.
        ctx.register_event_time_timer(a.expires);
        ctx.emit((a.category, old, b.price));
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut KeyedContext<'_, i64, (i64, Option<i64>, i64)>,
    ) -> Result<(), BoxError> {
        self.last.as_ref().unwrap().clear(ctx);
        Ok(())
    }
}

/// q5, hot items: per 10 s window sliding by 2 s, the auctions with the most bids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q5 {
    pub auction: i64,
    pub num: u64,
}

/// Per window: the largest count so far and the auctions that have it.
#[derive(Clone, Default)]
struct Q5Max {
    best: Option<ValueState<(u64, Vec<i64>)>>,
}

impl KeyedProcessFunction<i64, crate::WindowResult<i64, u64>, Q5> for Q5Max {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.best = Some(ctx.value_state("max"));
        Ok(())
    }

    fn process(
        &mut self,
        r: crate::WindowResult<i64, u64>,
        ctx: &mut KeyedContext<'_, i64, Q5>,
    ) -> Result<(), BoxError> {
        let best = self.best.as_ref().unwrap();
        // Every count of this window is emitted before the watermark that fired it.
        ctx.register_event_time_timer(r.end - 1);
        match best.get_mut(ctx) {
            Some((max, auctions)) => {
                if r.value > *max {
                    *max = r.value;
                    auctions.clear();
                }
                if r.value == *max {
                    auctions.push(r.key);
                }
            }
            None => best.set(ctx, (r.value, vec![r.key])),
        }
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, i64, Q5>) -> Result<(), BoxError> {
        if let Some((num, auctions)) = self.best.as_ref().unwrap().clear(ctx) {
            for auction in auctions {
                ctx.emit(Q5 { auction, num });
            }
        }
        Ok(())
    }
}

pub fn q5(events: &DataStream<Event>) -> DataStream<Q5> {
    bids(events)
        .key_by(|b: &Bid| b.auction)
        .window(WindowAssigner::sliding(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .count()
        .key_by(|r: &crate::WindowResult<i64, u64>| r.start)
        .process("q5-max", Q5Max::default())
}

/// q7, highest bid: the bids of each 10 s window whose price is the window's maximum (the
/// SQL's join takes bids with `window_end - 10 s <= dateTime <= window_end`, so a bid at
/// exactly the end of a window also matches that window's maximum). Fields in the SQL's
/// SELECT order (the reference's sink declares `bidder, price` the other way round).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Q7 {
    pub auction: i64,
    pub price: i64,
    pub bidder: i64,
    pub date_time: Timestamp,
    pub extra: Str,
}

/// A bid sent to window `start`; `counts` is false for a bid at exactly the window's end
/// (it joins the maximum but does not take part in it).
type Q7In = (i64, Bid, bool);

/// Buckets per window in q7's first stage, so that one window's bids spread over subtasks.
const Q7_BUCKETS: i64 = 64;

/// First stage of q7, per (window, bucket): the bucket's maximum and the bids that may carry
/// the window's maximum (those at least the bucket's maximum).
#[derive(Clone, Default)]
struct Q7Local {
    best: Option<ValueState<(i64, Vec<Bid>)>>,
}

impl KeyedProcessFunction<(i64, i64), Q7In, (i64, i64, Vec<Bid>)> for Q7Local {
    fn open(&mut self, ctx: &mut OpenContext<'_, (i64, i64)>) -> Result<(), BoxError> {
        self.best = Some(ctx.value_state("max"));
        Ok(())
    }

    fn process(
        &mut self,
        (start, bid, counts): Q7In,
        ctx: &mut KeyedContext<'_, (i64, i64), (i64, i64, Vec<Bid>)>,
    ) -> Result<(), BoxError> {
        let best = self.best.as_ref().unwrap();
        ctx.register_event_time_timer(start + TEN_S);
        let state = match best.get_mut(ctx) {
            Some(s) => s,
            None => {
                best.set(ctx, (i64::MIN, Vec::new()));
                best.get_mut(ctx).expect("just set")
            }
        };
        if counts && bid.price > state.0 {
            state.0 = bid.price;
            let max = state.0;
            state.1.retain(|b| b.price >= max);
        }
        if bid.price >= state.0 {
            state.1.push(bid);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut KeyedContext<'_, (i64, i64), (i64, i64, Vec<Bid>)>,
    ) -> Result<(), BoxError> {
        if let Some((max, bids)) = self.best.as_ref().unwrap().clear(ctx) {
            let start = ctx.key().0;
            ctx.emit((start, max, bids));
        }
        Ok(())
    }
}

/// Second stage of q7, per window: the maximum over the buckets, then its bids.
#[derive(Clone, Default)]
struct Q7Global {
    best: Option<ValueState<(i64, Vec<Bid>)>>,
}

impl KeyedProcessFunction<i64, (i64, i64, Vec<Bid>), Q7> for Q7Global {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.best = Some(ctx.value_state("max"));
        Ok(())
    }

    fn process(
        &mut self,
        (start, max, bids): (i64, i64, Vec<Bid>),
        ctx: &mut KeyedContext<'_, i64, Q7>,
    ) -> Result<(), BoxError> {
        let best = self.best.as_ref().unwrap();
        ctx.register_event_time_timer(start + TEN_S);
        let mut state = best.clear(ctx).unwrap_or((i64::MIN, Vec::new()));
        state.0 = state.0.max(max);
        state.1.extend(bids);
        let m = state.0;
        state.1.retain(|b| b.price >= m);
        best.set(ctx, state);
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, i64, Q7>) -> Result<(), BoxError> {
        if let Some((max, bids)) = self.best.as_ref().unwrap().clear(ctx) {
            for b in bids.into_iter().filter(|b| b.price == max) {
                ctx.emit(Q7 {
                    auction: b.auction,
                    price: b.price,
                    bidder: b.bidder,
                    date_time: b.date_time,
                    extra: b.extra,
                });
            }
        }
        Ok(())
    }
}

pub fn q7(events: &DataStream<Event>) -> DataStream<Q7> {
    bids(events)
        .flat_map(|b| {
            let start = b.date_time - b.date_time.rem_euclid(TEN_S);
            let at_end = (b.date_time == start).then(|| (start - TEN_S, b.clone(), false));
            std::iter::once((start, b, true)).chain(at_end)
        })
        .key_by(|(start, b, _): &Q7In| (*start, b.auction.rem_euclid(Q7_BUCKETS)))
        .process("q7-local-max", Q7Local::default())
        .key_by(|(start, _, _): &(i64, i64, Vec<Bid>)| *start)
        .process("q7-max", Q7Global::default())
}

/// q8, monitor new users: people who created an account and opened an auction in the same
/// 10 s window (`id, name` and the window's start).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q8 {
    pub id: i64,
    pub name: Str,
    pub stime: Timestamp,
}

/// Per person id and window start: the person's name (once they signed up in it) and whether
/// they opened an auction in it; emitted once when both are known.
#[derive(Clone, Default)]
struct Q8Join {
    seen: Option<ValueState<(Option<Str>, bool, bool)>>,
}

impl KeyedProcessFunction<(i64, i64), Option<Str>, Q8> for Q8Join {
    fn open(&mut self, ctx: &mut OpenContext<'_, (i64, i64)>) -> Result<(), BoxError> {
        self.seen = Some(ctx.value_state("seen"));
        Ok(())
    }

    fn process(
        &mut self,
        person: Option<Str>,
        ctx: &mut KeyedContext<'_, (i64, i64), Q8>,
    ) -> Result<(), BoxError> {
        let seen = self.seen.as_ref().unwrap();
        let (id, start) = *ctx.key();
        ctx.register_event_time_timer(start + TEN_S - 1);
        let (mut name, mut sold, mut emitted) = seen.clear(ctx).unwrap_or((None, false, false));
        match person {
            Some(n) => name = Some(n),
            None => sold = true,
        }
        if let (Some(n), true, false) = (&name, sold, emitted) {
            let row = Q8 {
                id,
                name: n.clone(),
                stime: start,
            };
            ctx.emit(row);
            emitted = true;
        }
        seen.set(ctx, (name, sold, emitted));
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, (i64, i64), Q8>) -> Result<(), BoxError> {
        self.seen.as_ref().unwrap().clear(ctx);
        Ok(())
    }
}

pub fn q8(events: &DataStream<Event>) -> DataStream<Q8> {
    let window = |t: Timestamp| t - t.rem_euclid(TEN_S);
    events
        .flat_map(move |e| match e {
            Event::Person(p) => Some(((p.id, window(p.date_time)), Some(p.name))),
            Event::Auction(a) => Some(((a.seller, window(a.date_time)), None)),
            Event::Bid(_) => None,
        })
        .key_by(|(k, _): &((i64, i64), Option<Str>)| *k)
        .process("q8-join", Unkey(Q8Join::default()))
}

/// q9, winning bids: per auction, the bid with the highest price (earliest on ties) made
/// while it was open; upserts keyed by the auction's `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Q9 {
    pub auction: Auction,
    pub bid: Bid,
}

pub fn q9(events: &DataStream<Event>) -> DataStream<Q9> {
    auctions_and_bids(events)
        .key_by(|(id, _): &(i64, AuctionOrBid)| *id)
        .process(
            "q9-winning-bid",
            Unkey(WinningBid::new(|new, best| {
                new.price > best.price
                    || (new.price == best.price && new.date_time < best.date_time)
            })),
        )
        .map(|(auction, bid)| Q9 { auction, bid })
}

/// q11, user sessions: bids per bidder per session (10 s of inactivity ends one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q11 {
    pub bidder: i64,
    pub bid_count: u64,
    /// The first bid's time.
    pub starttime: Timestamp,
    /// The last bid's time plus the gap.
    pub endtime: Timestamp,
}

/// Per bidder: open sessions `(first, last, count)`, merged as bids arrive (in any order),
/// emitted when the watermark passes their end.
#[derive(Clone, Default)]
struct Sessions {
    open: Option<ValueState<Vec<(Timestamp, Timestamp, u64)>>>,
}

impl KeyedProcessFunction<i64, Timestamp, Q11> for Sessions {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.open = Some(ctx.value_state("sessions"));
        Ok(())
    }

    fn process(
        &mut self,
        t: Timestamp,
        ctx: &mut KeyedContext<'_, i64, Q11>,
    ) -> Result<(), BoxError> {
        let open = self.open.as_ref().unwrap();
        let mut sessions = open.clear(ctx).unwrap_or_default();
        let (mut first, mut last, mut count) = (t, t, 1);
        // Merge every session that overlaps; a merge can make the session reach others.
        loop {
            let before = sessions.len();
            sessions.retain(|&(f, l, c)| {
                let overlaps = first < l + TEN_S && f < last + TEN_S;
                if overlaps {
                    first = first.min(f);
                    last = last.max(l);
                    count += c;
                }
                !overlaps
            });
            if sessions.len() == before {
                break;
            }
        }
        sessions.push((first, last, count));
        ctx.register_event_time_timer(last + TEN_S - 1);
        open.set(ctx, sessions);
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, i64, Q11>) -> Result<(), BoxError> {
        let open = self.open.as_ref().unwrap();
        let wm = ctx.watermark();
        let bidder = *ctx.key();
        let Some(sessions) = open.clear(ctx) else {
            return Ok(());
        };
        let (done, still): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .partition(|&(_, l, _)| l + TEN_S - 1 <= wm);
        for (first, last, count) in done {
            ctx.emit(Q11 {
                bidder,
                bid_count: count,
                starttime: first,
                endtime: last + TEN_S,
            });
        }
        if !still.is_empty() {
            open.set(ctx, still);
        }
        Ok(())
    }
}

pub fn q11(events: &DataStream<Event>) -> DataStream<Q11> {
    bids(events)
        .map(|b| (b.bidder, b.date_time))
        .key_by(|(bidder, _): &(i64, Timestamp)| *bidder)
        .process("q11-sessions", Unkey(Sessions::default()))
}

/// q12, processing-time windows: bids per bidder per 10 s of wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q12 {
    pub bidder: i64,
    pub bid_count: u64,
    pub starttime: Timestamp,
    pub endtime: Timestamp,
}

/// Per bidder: the current wall-clock window and its count. Weir has event-time timers
/// only, so a window is emitted when the bidder's next bid falls in a later window, or at the
/// end of the input (a timer at the final watermark).
#[derive(Clone, Default)]
struct ProcTimeCount {
    window: Option<ValueState<(Timestamp, u64)>>,
}

/// Wall-clock time, ms since the Unix epoch.
pub(crate) fn wall_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Timestamp)
}

impl KeyedProcessFunction<i64, i64, Q12> for ProcTimeCount {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.window = Some(ctx.value_state("window"));
        Ok(())
    }

    fn process(&mut self, _: i64, ctx: &mut KeyedContext<'_, i64, Q12>) -> Result<(), BoxError> {
        let window = self.window.as_ref().unwrap();
        let now = wall_ms();
        let start = now - now.rem_euclid(TEN_S);
        let bidder = *ctx.key();
        match window.get_mut(ctx) {
            Some((s, n)) if *s == start => *n += 1,
            Some(w) => {
                let (s, n) = std::mem::replace(w, (start, 1));
                ctx.emit(Q12 {
                    bidder,
                    bid_count: n,
                    starttime: s,
                    endtime: s + TEN_S,
                });
            }
            None => {
                window.set(ctx, (start, 1));
                ctx.register_event_time_timer(crate::MAX_WATERMARK);
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, i64, Q12>) -> Result<(), BoxError> {
        let bidder = *ctx.key();
        if let Some((s, n)) = self.window.as_ref().unwrap().clear(ctx) {
            ctx.emit(Q12 {
                bidder,
                bid_count: n,
                starttime: s,
                endtime: s + TEN_S,
            });
        }
        Ok(())
    }
}

pub fn q12(events: &DataStream<Event>) -> DataStream<Q12> {
    bids(events)
        .map(|b| (b.bidder, b.bidder))
        .key_by(|(bidder, _): &(i64, i64)| *bidder)
        .process("q12-count", Unkey(ProcTimeCount::default()))
}

/// q18, last bid per (bidder, auction) by event time: upserts of whole bids keyed by
/// `(bidder, auction)`.
pub fn q18(events: &DataStream<Event>) -> DataStream<Bid> {
    bids(events)
        .key_by(|b: &Bid| (b.bidder, b.auction))
        .map_with_state("q18-last", |last: &mut Option<Timestamp>, b: Bid| {
            if last.is_some_and(|t| b.date_time < t) {
                return Ok(None);
            }
            *last = Some(b.date_time);
            Ok(Some(b))
        })
}

/// q19, the ten highest bids per auction: upserts keyed by `(auction, rank_number)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Q19 {
    #[serde(flatten)]
    pub bid: Bid,
    pub rank_number: u32,
}

/// Per auction: its ten highest bids, highest first. A bid that does not enter them only reads
/// the state, so that a checkpoint writes the lists that changed, not every list that was
/// offered a bid (most bids go to a few hot auctions whose lists they do not enter).
#[derive(Clone, Default)]
struct Top10 {
    top: Option<ValueState<Vec<Bid>>>,
}

impl KeyedProcessFunction<i64, Bid, Q19> for Top10 {
    fn open(&mut self, ctx: &mut OpenContext<'_, i64>) -> Result<(), BoxError> {
        self.top = Some(ctx.value_state("q19-top10"));
        Ok(())
    }

    fn process(&mut self, b: Bid, ctx: &mut KeyedContext<'_, i64, Q19>) -> Result<(), BoxError> {
        let state = self.top.as_ref().unwrap();
        let at = state
            .get(ctx)
            .map_or(0, |top| top.partition_point(|t| t.price >= b.price));
        if at >= 10 {
            return Ok(());
        }
        // The rows from the new bid's rank down changed.
        let rows: Vec<Q19> = match state.get_mut(ctx) {
            Some(top) => {
                top.insert(at, b);
                top.truncate(10);
                top[at..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| Q19 {
                        bid: b.clone(),
                        rank_number: (at + i + 1) as u32,
                    })
                    .collect()
            }
            None => {
                let row = Q19 {
                    bid: b.clone(),
                    rank_number: 1,
                };
                state.set(ctx, vec![b]);
                vec![row]
            }
        };
        for row in rows {
            ctx.emit(row);
        }
        Ok(())
    }
}

pub fn q19(events: &DataStream<Event>) -> DataStream<Q19> {
    bids(events)
        .key_by(|b: &Bid| b.auction)
        .process("q19-top10", Top10::default())
}

/// q20, bids with their (category-10) auction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Q20 {
    pub bid: Bid,
    pub auction: Auction,
}

pub fn q20(events: &DataStream<Event>) -> DataStream<Q20> {
    events
        .flat_map(|e| match e {
            Event::Auction(a) => Some((a.id, Side::One((a.category == 10).then_some(a)))),
            Event::Bid(b) => Some((b.auction, Side::Many(b))),
            Event::Person(_) => None,
        })
        .key_by(|(id, _): &(i64, Side<Auction, Bid>)| *id)
        .process(
            "q20-join",
            Unkey(LookupJoin::new(|a: &Auction, bid| Q20 {
                bid,
                auction: a.clone(),
            })),
        )
}

/// q21, channel ids: bids of the four hot channels (ids 0-3) or whose URL carries a
/// `channel_id` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q21 {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: Str,
    pub channel_id: Str,
}

/// `REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)`: the value of the first
/// `channel_id=` at the start of `url` or after a `&`.
pub fn channel_id_of(url: &str) -> Option<&str> {
    const KEY: &str = "channel_id=";
    let mut from = 0;
    while let Some(i) = url[from..].find(KEY) {
        let at = from + i;
        if at == 0 || url.as_bytes()[at - 1] == b'&' {
            let rest = &url[at + KEY.len()..];
            return Some(rest.split('&').next().unwrap_or(""));
        }
        from = at + 1;
    }
    None
}

/// `part`, a slice of `s`, as a [`Str`]: borrowed from the same table when `s` is.
fn sub(s: &Str, part: &str) -> Str {
    match s {
        Str::Borrowed(whole) => {
            let at = part.as_ptr() as usize - whole.as_ptr() as usize;
            Str::Borrowed(&whole[at..at + part.len()])
        }
        Str::Owned(_) => Str::Owned(part.to_string()),
    }
}

pub fn q21(events: &DataStream<Event>) -> DataStream<Q21> {
    const HOT: [(&str, &str); 4] = [
        ("apple", "0"),
        ("google", "1"),
        ("facebook", "2"),
        ("baidu", "3"),
    ];
    bids(events).flat_map(|b| {
        let hot = HOT.iter().find(|(c, _)| b.channel.eq_ignore_ascii_case(c));
        let channel_id = match hot {
            Some((_, id)) => Str::Borrowed(id),
            None => sub(&b.url, channel_id_of(&b.url)?),
        };
        Some(Q21 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            channel: b.channel,
            channel_id,
        })
    })
}

/// q22, URL directories: the first three path segments of each bid's URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Q22 {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: Str,
    pub dir1: Option<Str>,
    pub dir2: Option<Str>,
    pub dir3: Option<Str>,
}

/// `SPLIT_INDEX(s, '/', i)`: the `i`-th piece of `s` split at every `/`.
pub fn split_index(s: &str, i: usize) -> Option<&str> {
    s.split('/').nth(i)
}

pub fn q22(events: &DataStream<Event>) -> DataStream<Q22> {
    bids(events).map(|b| {
        let dir = |i| split_index(&b.url, i).map(|d| sub(&b.url, d));
        Q22 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            dir1: dir(3),
            dir2: dir(4),
            dir3: dir(5),
            channel: b.channel,
        }
    })
}
