//! Plain sequential versions of the queries: the SQL read literally over the whole input (no
//! streaming, no state, no watermarks), to check the dataflows' results against on small
//! inputs. Each returns the query's final result as a sorted list; updating queries return
//! their final table.

use std::collections::{BTreeMap, HashMap};

use super::model::{Auction, Bid, Event, Person, Str};
use super::queries::{
    channel_id_of, split_index, Milli, Q0, Q1, Q11, Q2, Q21, Q22, Q3, Q4, Q5, Q7, Q8,
};
use crate::Timestamp;

const TEN_S: i64 = 10_000;

fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

fn people(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

pub fn q0(events: &[Event]) -> Vec<Q0> {
    sorted(
        bids(events)
            .map(|b| Q0 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                date_time: b.date_time,
                extra: b.extra.clone(),
            })
            .collect(),
    )
}

pub fn q1(events: &[Event]) -> Vec<Q1> {
    sorted(
        bids(events)
            .map(|b| Q1 {
                auction: b.auction,
                bidder: b.bidder,
                price: Milli(b.price * 908),
                date_time: b.date_time,
                extra: b.extra.clone(),
            })
            .collect(),
    )
}

pub fn q2(events: &[Event]) -> Vec<Q2> {
    sorted(
        bids(events)
            .filter(|b| b.auction % 123 == 0)
            .map(|b| Q2 {
                auction: b.auction,
                price: b.price,
            })
            .collect(),
    )
}

pub fn q3(events: &[Event]) -> Vec<Q3> {
    let mut rows = Vec::new();
    for a in auctions(events).filter(|a| a.category == 10) {
        for p in people(events) {
            if a.seller == p.id && ["OR", "ID", "CA"].contains(&&*p.state) {
                rows.push(Q3 {
                    name: p.name.clone(),
                    city: p.city.clone(),
                    state: p.state.clone(),
                    id: a.id,
                });
            }
        }
    }
    sorted(rows)
}

/// The bids of `a` made while it was open.
fn open_bids<'a>(a: &'a Auction, by_auction: &'a HashMap<i64, Vec<&Bid>>) -> Vec<&'a Bid> {
    by_auction
        .get(&a.id)
        .into_iter()
        .flatten()
        .copied()
        .filter(|b| a.date_time <= b.date_time && b.date_time <= a.expires)
        .collect()
}

fn bids_by_auction(events: &[Event]) -> HashMap<i64, Vec<&Bid>> {
    let mut m: HashMap<i64, Vec<&Bid>> = HashMap::new();
    for b in bids(events) {
        m.entry(b.auction).or_default().push(b);
    }
    m
}

pub fn q4(events: &[Event]) -> Vec<Q4> {
    let by_auction = bids_by_auction(events);
    let mut per_category: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for a in auctions(events) {
        if let Some(max) = open_bids(a, &by_auction).iter().map(|b| b.price).max() {
            let e = per_category.entry(a.category).or_default();
            e.0 += max;
            e.1 += 1;
        }
    }
    per_category
        .into_iter()
        .map(|(category, (sum, n))| Q4 {
            category,
            avg: sum / n,
        })
        .collect()
}

pub fn q5(events: &[Event]) -> Vec<Q5> {
    // Count per (window start, auction); windows of 10 s every 2 s.
    let mut counts: BTreeMap<i64, HashMap<i64, u64>> = BTreeMap::new();
    for b in bids(events) {
        let last = b.date_time - b.date_time.rem_euclid(2000);
        let mut start = last;
        while start > b.date_time - TEN_S {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= 2000;
        }
    }
    let mut rows = Vec::new();
    for per_auction in counts.values() {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (&auction, &num) in per_auction {
            if num >= max {
                rows.push(Q5 { auction, num });
            }
        }
    }
    sorted(rows)
}

pub fn q7(events: &[Event]) -> Vec<Q7> {
    let mut max: BTreeMap<i64, i64> = BTreeMap::new();
    for b in bids(events) {
        let end = b.date_time - b.date_time.rem_euclid(TEN_S) + TEN_S;
        let m = max.entry(end).or_insert(i64::MIN);
        *m = (*m).max(b.price);
    }
    let mut rows = Vec::new();
    for (&end, &maxprice) in &max {
        for b in bids(events) {
            if b.price == maxprice && end - TEN_S <= b.date_time && b.date_time <= end {
                rows.push(Q7 {
                    auction: b.auction,
                    price: b.price,
                    bidder: b.bidder,
                    date_time: b.date_time,
                    extra: b.extra.clone(),
                });
            }
        }
    }
    sorted(rows)
}

pub fn q8(events: &[Event]) -> Vec<Q8> {
    let start = |t: Timestamp| t - t.rem_euclid(TEN_S);
    let sellers: std::collections::HashSet<(i64, i64)> = auctions(events)
        .map(|a| (a.seller, start(a.date_time)))
        .collect();
    let mut rows: Vec<Q8> = people(events)
        .filter(|p| sellers.contains(&(p.id, start(p.date_time))))
        .map(|p| Q8 {
            id: p.id,
            name: p.name.clone(),
            stime: start(p.date_time),
        })
        .collect();
    rows.sort();
    rows.dedup();
    rows
}

/// q9's final table as `(auction id, winning price, winning bid's time)` (several bids can
/// share the winning price and time; any of them is a correct winner).
pub fn q9(events: &[Event]) -> Vec<(i64, i64, Timestamp)> {
    let by_auction = bids_by_auction(events);
    let mut rows = Vec::new();
    for a in auctions(events) {
        let best = open_bids(a, &by_auction)
            .into_iter()
            .max_by(|x, y| x.price.cmp(&y.price).then(y.date_time.cmp(&x.date_time)));
        if let Some(b) = best {
            rows.push((a.id, b.price, b.date_time));
        }
    }
    sorted(rows)
}

pub fn q11(events: &[Event]) -> Vec<Q11> {
    let mut times: BTreeMap<i64, Vec<Timestamp>> = BTreeMap::new();
    for b in bids(events) {
        times.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut rows = Vec::new();
    for (bidder, mut ts) in times {
        ts.sort_unstable();
        let (mut first, mut last, mut n) = (ts[0], ts[0], 0u64);
        for t in ts {
            if t >= last + TEN_S {
                rows.push(Q11 {
                    bidder,
                    bid_count: n,
                    starttime: first,
                    endtime: last + TEN_S,
                });
                (first, n) = (t, 0);
            }
            last = t;
            n += 1;
        }
        rows.push(Q11 {
            bidder,
            bid_count: n,
            starttime: first,
            endtime: last + TEN_S,
        });
    }
    sorted(rows)
}

/// q12 depends on the wall clock; what is fixed is the number of bids per bidder.
pub fn q12_bids_per_bidder(events: &[Event]) -> BTreeMap<i64, u64> {
    let mut m = BTreeMap::new();
    for b in bids(events) {
        *m.entry(b.bidder).or_default() += 1;
    }
    m
}

/// q18's final table as `(bidder, auction, time of the last bid)`.
pub fn q18(events: &[Event]) -> Vec<(i64, i64, Timestamp)> {
    let mut last: BTreeMap<(i64, i64), Timestamp> = BTreeMap::new();
    for b in bids(events) {
        let t = last.entry((b.bidder, b.auction)).or_insert(b.date_time);
        *t = (*t).max(b.date_time);
    }
    last.into_iter().map(|((b, a), t)| (b, a, t)).collect()
}

/// q19's final table as `(auction, rank, price)` (bids of equal price may swap ranks).
pub fn q19(events: &[Event]) -> Vec<(i64, u32, i64)> {
    let mut prices: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for b in bids(events) {
        prices.entry(b.auction).or_default().push(b.price);
    }
    let mut rows = Vec::new();
    for (auction, mut p) in prices {
        p.sort_unstable_by(|a, b| b.cmp(a));
        for (i, price) in p.into_iter().take(10).enumerate() {
            rows.push((auction, i as u32 + 1, price));
        }
    }
    rows
}

/// q20 as `(bid, auction id)` pairs in a canonical order.
pub fn q20(events: &[Event]) -> Vec<(Bid, i64)> {
    let cat10: HashMap<i64, &Auction> = auctions(events)
        .filter(|a| a.category == 10)
        .map(|a| (a.id, a))
        .collect();
    let mut rows: Vec<(Bid, i64)> = bids(events)
        .filter_map(|b| cat10.get(&b.auction).map(|a| (b.clone(), a.id)))
        .collect();
    rows.sort_by(|x, y| {
        (
            x.0.date_time,
            x.0.auction,
            x.0.bidder,
            x.0.price,
            &x.0.extra,
        )
            .cmp(&(
                y.0.date_time,
                y.0.auction,
                y.0.bidder,
                y.0.price,
                &y.0.extra,
            ))
    });
    rows
}

pub fn q21(events: &[Event]) -> Vec<Q21> {
    let mut rows = Vec::new();
    for b in bids(events) {
        let lower = b.channel.to_lowercase();
        let hot = ["apple", "google", "facebook", "baidu"]
            .iter()
            .position(|c| *c == lower);
        let id = match hot {
            Some(i) => Some(Str::Owned(i.to_string())),
            None => channel_id_of(&b.url).map(|id| Str::Owned(id.to_string())),
        };
        if let Some(channel_id) = id {
            rows.push(Q21 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                channel: b.channel.clone(),
                channel_id,
            });
        }
    }
    sorted(rows)
}

pub fn q22(events: &[Event]) -> Vec<Q22> {
    sorted(
        bids(events)
            .map(|b| Q22 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                channel: b.channel.clone(),
                dir1: split_index(&b.url, 3).map(|d| Str::Owned(d.to_string())),
                dir2: split_index(&b.url, 4).map(|d| Str::Owned(d.to_string())),
                dir3: split_index(&b.url, 5).map(|d| Str::Owned(d.to_string())),
            })
            .collect(),
    )
}
