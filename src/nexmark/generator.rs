//! The Nexmark event generator, after the reference implementation (nexmark/nexmark,
//! `NexmarkGenerator` and its helpers): the same event mix (1 person, 3 auctions, 46 bids in
//! every 50 events), ids, hot sellers/auctions/bidders, prices, string shapes and sizes,
//! auction lengths and event-time progression, with the reference's random calls in the
//! reference's order.
//!
//! **Determinism.** The reference drew from one unseeded random generator per source split
//! (since 2021; before, a `java.util.Random` seeded with each event's id). Weir uses the
//! seeded scheme: event `k` is a pure function of `k` and the seed, drawn from a
//! `java.util.Random` (reimplemented bit for bit in [`JavaRandom`]) seeded with
//! `event id ^ seed`, so any parallelism generates the same events and any other
//! implementation can reproduce them. The reference's process-wide tables (hot URLs, the
//! 10 000-entry channel table, the 1 MiB padding text) come from fixed seeds here
//! ([`TABLE_SEED`], [`EXTRA_SEED`]).
//!
//! **Time.** As in the reference with one generator: event number `n = 1 + k` happens at
//! `base_time + trunc(n * 1e6 / event_rate) / 1000` ms; event time advances at the configured
//! rate however fast events are actually produced.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::model::{Auction, Bid, Event, Person, Str};
use crate::Timestamp;

/// Seed of the generator of the channel and URL tables (`java.util.Random`).
pub const TABLE_SEED: i64 = 0;
/// Seed of the generator of the 1 MiB padding text `extra` fields are cut from.
pub const EXTRA_SEED: i64 = 0x4E45_584D;

const PERSON_PROPORTION: i64 = 1;
const AUCTION_PROPORTION: i64 = 3;
const TOTAL_PROPORTION: i64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i32 = 5;
const HOT_AUCTION_RATIO: i32 = 2;
const HOT_SELLER_RATIO: i32 = 4;
const HOT_BIDDER_RATIO: i32 = 4;
/// Hot ids are multiples of this.
const HOT_ID_BATCH: i64 = 100;
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const AVG_PERSON_BYTES: i32 = 200;
const AVG_AUCTION_BYTES: i32 = 500;
const AVG_BID_BYTES: i32 = 100;
const CHANNELS: usize = 10_000;
const EXTRA_LEN: usize = 1 << 20;
const MIN_STRING_LENGTH: i32 = 3;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// `java.util.Random`, bit for bit: a 48-bit linear congruential generator.
#[derive(Debug, Clone)]
pub struct JavaRandom {
    seed: u64,
}

impl JavaRandom {
    const MULTIPLIER: u64 = 0x5_DEEC_E66D;
    const ADDEND: u64 = 0xB;
    const MASK: u64 = (1 << 48) - 1;

    /// `new Random(seed)`.
    pub fn new(seed: i64) -> Self {
        JavaRandom {
            seed: (seed as u64 ^ Self::MULTIPLIER) & Self::MASK,
        }
    }

    fn next(&mut self, bits: u32) -> i32 {
        self.seed = self
            .seed
            .wrapping_mul(Self::MULTIPLIER)
            .wrapping_add(Self::ADDEND)
            & Self::MASK;
        (self.seed >> (48 - bits)) as i32
    }

    /// `nextInt()`.
    pub fn next_int(&mut self) -> i32 {
        self.next(32)
    }

    /// `nextInt(bound)`, uniform in `0..bound` (`bound > 0`).
    pub fn next_int_below(&mut self, bound: i32) -> i32 {
        debug_assert!(bound > 0);
        let mut r = self.next(31);
        let m = bound - 1;
        if bound & m == 0 {
            return ((bound as i64 * r as i64) >> 31) as i32;
        }
        let mut u = r;
        loop {
            r = u % bound;
            if u.wrapping_sub(r).wrapping_add(m) < 0 {
                u = self.next(31);
            } else {
                return r;
            }
        }
    }

    /// `nextLong()`.
    pub fn next_long(&mut self) -> i64 {
        ((self.next(32) as i64) << 32).wrapping_add(self.next(32) as i64)
    }

    /// `nextDouble()`, uniform in `[0, 1)`.
    pub fn next_double(&mut self) -> f64 {
        let hi = (self.next(26) as i64) << 27;
        let lo = self.next(27) as i64;
        (hi + lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Uniform in `0..n` (the reference's `LongGenerator.nextLong`).
fn next_long(r: &mut JavaRandom, n: i64) -> i64 {
    if n < i32::MAX as i64 {
        r.next_int_below(n as i32) as i64
    } else {
        (r.next_long() % n).abs()
    }
}

/// A price in cents, log-uniform between $1 and $1M.
fn next_price(r: &mut JavaRandom) -> i64 {
    (10f64.powf(r.next_double() * 6.0) * 100.0).round() as i64
}

/// 3 to `max_len - 1` characters, `a`-`z` or (1 in 13) `special`, trimmed of spaces.
fn next_string(r: &mut JavaRandom, max_len: i32, special: char) -> String {
    let len = MIN_STRING_LENGTH + r.next_int_below(max_len - MIN_STRING_LENGTH);
    let mut s = String::with_capacity(len as usize);
    for _ in 0..len {
        if r.next_int_below(13) == 0 {
            s.push(special);
        } else {
            s.push((b'a' + r.next_int_below(26) as u8) as char);
        }
    }
    if special == ' ' {
        let t = s.trim_matches(' ');
        if t.len() != s.len() {
            return t.to_string();
        }
    }
    s
}

/// The reference's slow `nextExactString` (its 1 MiB padding text is made this way).
fn exact_string_slow(r: &mut JavaRandom, len: usize) -> String {
    let (mut rnd, mut n) = (0i32, 0);
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        if n == 0 {
            rnd = r.next_int();
            n = 6;
        }
        s.push((b'a' as i32 + rnd % 26) as u8 as char);
        rnd /= 26;
        n -= 1;
    }
    s
}

/// `len` characters of the padding text at a random offset.
fn next_exact_string(r: &mut JavaRandom, len: usize) -> &'static str {
    let t = tables();
    let off = r.next_int_below((EXTRA_LEN - len) as i32) as usize;
    &t.extra[off..off + len]
}

/// Padding that brings an event of `current` bytes to `desired` on average (+-20%).
fn next_extra(r: &mut JavaRandom, current: i32, desired: i32) -> Str {
    if current > desired {
        return Cow::Borrowed("");
    }
    let d = desired - current;
    let delta = (d as f64 * 0.2).round() as i32;
    let min = d - delta;
    let size = min
        + if delta == 0 {
            0
        } else {
            r.next_int_below(2 * delta)
        };
    Cow::Borrowed(next_exact_string(r, size as usize))
}

fn last_base0_person_id(event_id: i64) -> i64 {
    let epoch = event_id / TOTAL_PROPORTION;
    let off = (event_id % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + off
}

fn next_base0_person_id(event_id: i64, r: &mut JavaRandom) -> i64 {
    let people = last_base0_person_id(event_id) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + next_long(r, active + PERSON_ID_LEAD)
}

fn last_base0_auction_id(event_id: i64) -> i64 {
    let mut epoch = event_id / TOTAL_PROPORTION;
    let mut off = event_id % TOTAL_PROPORTION;
    if off < PERSON_PROPORTION {
        epoch -= 1;
        off = AUCTION_PROPORTION - 1;
    } else if off >= PERSON_PROPORTION + AUCTION_PROPORTION {
        off = AUCTION_PROPORTION - 1;
    } else {
        off -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + off
}

fn next_base0_auction_id(event_id: i64, r: &mut JavaRandom) -> i64 {
    let max = last_base0_auction_id(event_id);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + next_long(r, max - min + 1 + AUCTION_ID_LEAD)
}

/// The generator's fixed tables, built once per process from fixed seeds.
struct Tables {
    extra: &'static str,
    hot_urls: [&'static str; 4],
    channels: Vec<(&'static str, &'static str)>,
    /// `FIRST_NAMES[i] + " " + LAST_NAMES[j]` at `i * 9 + j`.
    names: Vec<&'static str>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn base_url(r: &mut JavaRandom) -> String {
    let a = next_string(r, 5, '_');
    let b = next_string(r, 5, '_');
    let c = next_string(r, 5, '_');
    format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1")
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let extra = leak(exact_string_slow(
            &mut JavaRandom::new(EXTRA_SEED),
            EXTRA_LEN,
        ));
        let mut r = JavaRandom::new(TABLE_SEED);
        let hot_urls = std::array::from_fn(|_| leak(base_url(&mut r)));
        let channels = (0..CHANNELS)
            .map(|i| {
                let mut url = base_url(&mut r);
                if r.next_int_below(10) > 0 {
                    let id = (i as i32).reverse_bits().wrapping_abs();
                    url.push_str(&format!("&channel_id={id}"));
                }
                (leak(format!("channel-{i}")), leak(url))
            })
            .collect();
        let names = FIRST_NAMES
            .iter()
            .flat_map(|f| LAST_NAMES.iter().map(move |l| leak(format!("{f} {l}"))))
            .collect();
        Tables {
            extra,
            hot_urls,
            channels,
            names,
        }
    })
}

/// What the generator produces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorConfig {
    /// Events per second of event time (the reference's `first-event.rate`; its published
    /// figures use 10 000 000).
    pub event_rate: f64,
    /// Event time of event number 0, ms since the Unix epoch.
    pub base_time: Timestamp,
    /// Mixed into every event's seed (0: the reference's per-event seeds).
    pub seed: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            event_rate: 10_000_000.0,
            // 2020-09-13 12:26:40 UTC.
            base_time: 1_600_000_000_000,
            seed: 0,
        }
    }
}

/// Generates Nexmark event `k` (0, 1, ...) as a pure function of `k`.
#[derive(Debug, Clone)]
pub struct NexmarkGenerator {
    config: GeneratorConfig,
    /// Microseconds of event time between two events.
    delay_us: f64,
}

impl NexmarkGenerator {
    /// A generator; `config.event_rate` must be positive.
    pub fn new(config: GeneratorConfig) -> Self {
        assert!(
            config.event_rate.is_finite() && config.event_rate > 0.0,
            "event rate must be positive"
        );
        tables();
        NexmarkGenerator {
            config,
            delay_us: 1_000_000.0 / config.event_rate,
        }
    }

    fn timestamp_for(&self, event_number: i64) -> Timestamp {
        self.config.base_time + ((event_number as f64 * self.delay_us) as i64) / 1000
    }

    /// The `k`-th event (event number `1 + k`, event id `2 + k`, as the reference's single
    /// generator numbers them).
    pub fn event(&self, k: u64) -> Event {
        let number = 1 + k as i64;
        let id = 1 + number;
        let ts = self.timestamp_for(number);
        let r = &mut JavaRandom::new(id ^ self.config.seed);
        let rem = id % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            Event::Person(person(id, r, ts))
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            Event::Auction(self.auction(number, id, r, ts))
        } else {
            Event::Bid(bid(id, r, ts))
        }
    }

    fn auction(&self, number: i64, id: i64, r: &mut JavaRandom, ts: Timestamp) -> Auction {
        let auction_id = last_base0_auction_id(id) + FIRST_AUCTION_ID;
        let seller = if r.next_int_below(HOT_SELLER_RATIO) > 0 {
            (last_base0_person_id(id) / HOT_ID_BATCH) * HOT_ID_BATCH
        } else {
            next_base0_person_id(id, r)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + r.next_int_below(NUM_CATEGORIES) as i64;
        let initial_bid = next_price(r);
        // The auction lasts up to twice the time the next 1666 events take.
        let events_for_auctions = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION;
        let horizon = self.timestamp_for(number + events_for_auctions) - ts;
        let expires = ts + 1 + next_long(r, (horizon * 2).max(1));
        let item_name = next_string(r, 20, ' ');
        let description = next_string(r, 100, ' ');
        let reserve = initial_bid + next_price(r);
        let current = 8 + item_name.len() as i32 + description.len() as i32 + 8 * 5;
        let extra = next_extra(r, current, AVG_AUCTION_BYTES);
        Auction {
            id: auction_id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: ts,
            expires,
            seller,
            category,
            extra,
        }
    }
}

fn person(id: i64, r: &mut JavaRandom, ts: Timestamp) -> Person {
    let t = tables();
    let person_id = last_base0_person_id(id) + FIRST_PERSON_ID;
    let first = r.next_int_below(FIRST_NAMES.len() as i32) as usize;
    let last = r.next_int_below(LAST_NAMES.len() as i32) as usize;
    let name = t.names[first * LAST_NAMES.len() + last];
    let email_address = format!("{}@{}.com", next_string(r, 7, ' '), next_string(r, 5, ' '));
    let cc: Vec<String> = (0..4)
        .map(|_| format!("{:04}", r.next_int_below(10_000)))
        .collect();
    let credit_card = cc.join(" ");
    let city = US_CITIES[r.next_int_below(US_CITIES.len() as i32) as usize];
    let state = US_STATES[r.next_int_below(US_STATES.len() as i32) as usize];
    let current = 8
        + (name.len() + email_address.len() + credit_card.len() + city.len() + state.len()) as i32;
    let extra = next_extra(r, current, AVG_PERSON_BYTES);
    Person {
        id: person_id,
        name: Cow::Borrowed(name),
        email_address,
        credit_card,
        city: Cow::Borrowed(city),
        state: Cow::Borrowed(state),
        date_time: ts,
        extra,
    }
}

fn bid(id: i64, r: &mut JavaRandom, ts: Timestamp) -> Bid {
    let t = tables();
    let auction = if r.next_int_below(HOT_AUCTION_RATIO) > 0 {
        (last_base0_auction_id(id) / HOT_ID_BATCH) * HOT_ID_BATCH
    } else {
        next_base0_auction_id(id, r)
    } + FIRST_AUCTION_ID;
    let bidder = if r.next_int_below(HOT_BIDDER_RATIO) > 0 {
        (last_base0_person_id(id) / HOT_ID_BATCH) * HOT_ID_BATCH + 1
    } else {
        next_base0_person_id(id, r)
    } + FIRST_PERSON_ID;
    let price = next_price(r);
    let (channel, url) = if r.next_int_below(2) > 0 {
        let i = r.next_int_below(HOT_CHANNELS.len() as i32) as usize;
        (HOT_CHANNELS[i], t.hot_urls[i])
    } else {
        t.channels[r.next_int_below(CHANNELS as i32) as usize]
    };
    // The reference adds FIRST_PERSON_ID to bidders twice (since 2021); kept for fidelity.
    let bidder = bidder + FIRST_PERSON_ID;
    let extra = next_extra(r, 32, AVG_BID_BYTES);
    Bid {
        auction,
        bidder,
        price,
        channel: Cow::Borrowed(channel),
        url: Cow::Borrowed(url),
        date_time: ts,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `java.util.Random` printed by the JDK (OpenJDK 17).
    #[test]
    fn java_random_matches_the_jdk() {
        let mut r = JavaRandom::new(42);
        assert_eq!(r.next_int(), -1170105035);
        assert_eq!(r.next_int_below(100), 63);
        assert_eq!(JavaRandom::new(0).next_long(), -4962768465676381896);
        assert_eq!(JavaRandom::new(7).next_double(), 0.7306990420600421);
        // A power-of-two bound takes the high bits.
        assert_eq!(JavaRandom::new(42).next_int_below(16), 11);
        // A bound near 2^31 goes through the rejection loop.
        let mut r = JavaRandom::new(123456789);
        let v: Vec<i32> = (0..5).map(|_| r.next_int_below(1_000_000_007)).collect();
        assert_eq!(v, [426010958, 639209593, 981296483, 547328344, 838606290]);
        let mut r = JavaRandom::new(-5);
        assert_eq!(r.next_int_below(7), 5);
        assert_eq!(r.next_long(), 6704158090352596034);
        assert_eq!(r.next_double(), 0.343656322075349);
    }

    #[test]
    fn the_mix_ids_and_times_follow_the_reference() {
        let g = NexmarkGenerator::new(GeneratorConfig::default());
        let events: Vec<Event> = (0..5000).map(|k| g.event(k)).collect();
        let count = |t: u8| events.iter().filter(|e| e.event_type() == t).count();
        assert_eq!((count(0), count(1), count(2)), (100, 300, 4600));
        // The first event (id 2) is auction 1001; id 50 is the first person, 1001.
        match &events[0] {
            Event::Auction(a) => assert_eq!(a.id, 1001),
            e => panic!("{e:?}"),
        }
        match &events[48] {
            Event::Person(p) => assert_eq!(p.id, 1001),
            e => panic!("{e:?}"),
        }
        // 10M events per second: event number n = k + 1 at trunc(n * 0.1 us) / 1000 ms.
        assert!(events
            .windows(2)
            .all(|w| w[0].date_time() <= w[1].date_time()));
        let at = |k: u64| g.event(k).date_time() - 1_600_000_000_000;
        assert_eq!((at(0), at(9998), at(9999), at(19_999)), (0, 0, 1, 2));
        let g2 = NexmarkGenerator::new(GeneratorConfig::default());
        assert_eq!(g2.event(123_456), g.event(123_456), "a pure function of k");
    }

    #[test]
    fn fields_have_the_reference_shapes() {
        let g = NexmarkGenerator::new(GeneratorConfig::default());
        let mut bytes = [0usize; 3];
        let mut counts = [0usize; 3];
        for k in 0..50_000u64 {
            let e = g.event(k);
            let t = e.event_type() as usize;
            counts[t] += 1;
            match &e {
                Event::Person(p) => {
                    assert!(US_STATES.contains(&&*p.state));
                    assert_eq!(p.credit_card.len(), 19);
                    assert!(p.email_address.ends_with(".com"));
                    bytes[0] += 8
                        + p.name.len()
                        + p.email_address.len()
                        + 19
                        + p.city.len()
                        + p.state.len()
                        + p.extra.len();
                }
                Event::Auction(a) => {
                    assert!((10..15).contains(&a.category));
                    assert!(a.reserve >= a.initial_bid && a.initial_bid >= 100);
                    assert!(a.expires > a.date_time);
                    bytes[1] += 8 + a.item_name.len() + a.description.len() + 40 + a.extra.len();
                }
                Event::Bid(b) => {
                    assert!((100..=100_000_000).contains(&b.price));
                    assert!(b.url.starts_with("https://www.nexmark.com/"));
                    bytes[2] += 32 + b.extra.len();
                }
            }
        }
        // Average sizes near the reference's 200 / 500 / 100 bytes.
        for (t, want) in [(0, 200.0), (1, 500.0), (2, 100.0)] {
            let avg = bytes[t] as f64 / counts[t] as f64;
            assert!((avg - want).abs() < want * 0.1, "type {t}: {avg} bytes");
        }
    }
}
