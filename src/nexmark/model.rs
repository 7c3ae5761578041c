//! Nexmark's three event types, with the field names of the reference schema (Flink's
//! `datagen` table: `person`, `auction` and `bid` rows, camelCase fields).
//!
//! Strings that come from the generator's fixed tables (cities, states, names, channels,
//! URLs, the padding of `extra`) are borrowed from those tables, so generating and copying an
//! event allocates only for its truly random strings; state restored from a checkpoint owns
//! its strings ([`Str`] is a `Cow`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A string of an event: borrowed from the generator's tables, or owned.
pub type Str = Cow<'static, str>;

/// A new user of the auction site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: i64,
    pub name: Str,
    pub email_address: String,
    pub credit_card: String,
    pub city: Str,
    pub state: Str,
    /// Event time, ms since the Unix epoch.
    pub date_time: Timestamp,
    pub extra: Str,
}

/// An item put up for auction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    /// Event time, ms since the Unix epoch.
    pub date_time: Timestamp,
    /// When the auction closes, ms since the Unix epoch.
    pub expires: Timestamp,
    pub seller: i64,
    pub category: i64,
    pub extra: Str,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    /// Price in cents.
    pub price: i64,
    pub channel: Str,
    pub url: Str,
    /// Event time, ms since the Unix epoch.
    pub date_time: Timestamp,
    pub extra: Str,
}

/// One Nexmark event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event's time, ms since the Unix epoch.
    pub fn date_time(&self) -> Timestamp {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The reference schema's `event_type`: 0 person, 1 auction, 2 bid.
    pub fn event_type(&self) -> u8 {
        match self {
            Event::Person(_) => 0,
            Event::Auction(_) => 1,
            Event::Bid(_) => 2,
        }
    }

    /// The event as one JSON line of the reference schema:
    /// `{"event_type":2,"person":null,"auction":null,"bid":{...}}`, times written as SQL
    /// `TIMESTAMP(3)` text in UTC (`2020-09-13 12:26:40.000`), as Flink's JSON format does.
    pub fn to_json_line(&self) -> String {
        use serde_json::{json, Value};
        let with_time = |v: Value, fields: &[&str]| {
            let mut v = v;
            for f in fields {
                if let Some(ms) = v.get(*f).and_then(Value::as_i64) {
                    v[*f] = Value::String(sql_timestamp(ms));
                }
            }
            v
        };
        let (person, auction, bid) = match self {
            Event::Person(p) => (with_time(json!(p), &["dateTime"]), Value::Null, Value::Null),
            Event::Auction(a) => (
                Value::Null,
                with_time(json!(a), &["dateTime", "expires"]),
                Value::Null,
            ),
            Event::Bid(b) => (Value::Null, Value::Null, with_time(json!(b), &["dateTime"])),
        };
        json!({
            "event_type": self.event_type(),
            "person": person,
            "auction": auction,
            "bid": bid,
        })
        .to_string()
    }
}

/// `ms` since the Unix epoch as SQL `TIMESTAMP(3)` text in UTC: `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn sql_timestamp(ms: Timestamp) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_sql_text_in_utc() {
        assert_eq!(sql_timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(sql_timestamp(1_600_000_000_123), "2020-09-13 12:26:40.123");
    }

    #[test]
    fn json_lines_follow_the_reference_schema() {
        let bid = Event::Bid(Bid {
            auction: 1001,
            bidder: 2001,
            price: 123,
            channel: "Google".into(),
            url: "https://www.nexmark.com/a/b/c/item.htm?query=1".into(),
            date_time: 1_600_000_000_000,
            extra: "xyz".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&bid.to_json_line()).unwrap();
        assert_eq!(v["event_type"], 2);
        assert!(v["person"].is_null() && v["auction"].is_null());
        assert_eq!(v["bid"]["dateTime"], "2020-09-13 12:26:40.000");
        assert_eq!(v["bid"]["auction"], 1001);
        assert_eq!(v["bid"]["channel"], "Google");
    }
}
