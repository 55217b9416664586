//! Turns generated events into CSV lines, mixing in duplicates, late and malformed rows on request.

use crate::funnel::{uuid_v4, Shop};
use crate::Config;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use event_model::Event;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::VecDeque;
use std::io::Write;

pub const HEADER: &str = "event_id,user_id,event_type,product_id,price,event_time\n";

/// How many recent valid lines a duplicate may be drawn from (spans several files at the default size).
const DUPLICATE_HISTORY: usize = 1_000;

pub struct RowMaker {
    shop: Shop,
    recent: VecDeque<Vec<u8>>,
    duplicate_rate: f64,
    late_rate: f64,
    malformed_rate: f64,
}

impl RowMaker {
    pub fn new(rng: &mut StdRng, config: &Config) -> RowMaker {
        RowMaker {
            shop: Shop::new(rng),
            recent: VecDeque::with_capacity(DUPLICATE_HISTORY),
            duplicate_rate: config.duplicate_rate,
            late_rate: config.late_rate,
            malformed_rate: config.malformed_rate,
        }
    }

    /// A whole file: header and `rows` data rows.
    pub fn file_body(&mut self, rng: &mut StdRng, now: DateTime<Utc>, rows: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(HEADER.len() + rows * 100);
        body.extend_from_slice(HEADER.as_bytes());
        for _ in 0..rows {
            self.push_row(rng, now, &mut body);
        }
        body
    }

    fn push_row(&mut self, rng: &mut StdRng, now: DateTime<Utc>, body: &mut Vec<u8>) {
        if !self.recent.is_empty() && rng.random_bool(self.duplicate_rate) {
            let line = &self.recent[rng.random_range(0..self.recent.len())];
            body.extend_from_slice(line);
            return;
        }
        let mut event = self.shop.next_event(rng, now);
        if rng.random_bool(self.malformed_rate) {
            write_malformed(rng, &event, body);
            return;
        }
        if rng.random_bool(self.late_rate) {
            event.event_time = now - TimeDelta::minutes(rng.random_range(120..2_880));
        }
        let start = body.len();
        write_line(body, &event);
        if self.duplicate_rate > 0.0 {
            if self.recent.len() == DUPLICATE_HISTORY {
                self.recent.pop_front();
            }
            self.recent.push_back(body[start..].to_vec());
        }
    }
}

fn write_line(body: &mut Vec<u8>, event: &Event) {
    // Writing to a Vec cannot fail.
    let _ = writeln!(
        body,
        "{},{},{},{},{}.{:02},{}",
        event.event_id,
        event.user_id,
        event.event_type.as_str(),
        event.product_id,
        event.price_cents / 100,
        event.price_cents % 100,
        event
            .event_time
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
}

/// A row that breaks exactly one rule of the contract; each kind is equally likely.
fn write_malformed(rng: &mut StdRng, event: &Event, body: &mut Vec<u8>) {
    let time = event
        .event_time
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    let id = &event.event_id;
    let (user, product, kind) = (event.user_id, event.product_id, event.event_type.as_str());
    let price = format!("{}.{:02}", event.price_cents / 100, event.price_cents % 100);
    // Writing to a Vec cannot fail.
    let _ = match rng.random_range(0..11) {
        0 => writeln!(body, "{id},{user},click,{product},{price},{time}"),
        1 => writeln!(body, "{id},{user},{kind},{product},-{price},{time}"),
        2 => writeln!(body, "{id},{user},{kind},{product},{price}5,{time}"),
        3 => writeln!(body, "{id},user{user},{kind},{product},{price},{time}"),
        4 => writeln!(body, "{id},{user},{kind},2147483648,{price},{time}"),
        5 => writeln!(
            body,
            "{id},{user},{kind},{product},{price},2026-02-30T10:00:00Z"
        ),
        6 => writeln!(body, "{id},{user},{kind},{product},{price},yesterday"),
        7 => writeln!(body, ",{user},{kind},{product},{price},{time}"),
        8 => writeln!(body, "{id},{user},{kind},{product},{price}"),
        9 => writeln!(body, "{id},{user},{kind},{product},{price},{time},extra"),
        _ => writeln!(body, "{},{user},{kind},{product},1e3,{time}", uuid_v4(rng)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use event_model::{validate, RowReader};
    use rand::SeedableRng;

    fn maker(args: &[&str], seed: u64) -> (RowMaker, StdRng) {
        let mut argv = vec!["generator"];
        argv.extend_from_slice(args);
        let config = Config::parse_from(argv);
        let mut rng = StdRng::seed_from_u64(seed);
        (RowMaker::new(&mut rng, &config), rng)
    }

    fn outcomes(body: &[u8]) -> (usize, usize) {
        let mut reader = RowReader::new(body, "f.csv", "id", 0);
        let (mut valid, mut invalid) = (0, 0);
        while let Some(row) = reader.next_row().unwrap() {
            match validate(&row.row) {
                Ok(_) => valid += 1,
                Err(_) => invalid += 1,
            }
        }
        (valid, invalid)
    }

    #[test]
    fn clean_output_is_all_valid_and_seed_reproducible() {
        let now = Utc::now();
        let (mut a, mut rng_a) = maker(&[], 3);
        let (mut b, mut rng_b) = maker(&[], 3);
        let body = a.file_body(&mut rng_a, now, 1_000);
        assert_eq!(body, b.file_body(&mut rng_b, now, 1_000));
        assert_eq!(outcomes(&body), (1_000, 0));
    }

    #[test]
    fn malformed_rows_are_all_rejected() {
        let (mut maker, mut rng) = maker(&["--malformed-rate", "1"], 5);
        let body = maker.file_body(&mut rng, Utc::now(), 500);
        assert_eq!(outcomes(&body), (0, 500));
    }

    #[test]
    fn duplicates_repeat_earlier_lines_verbatim() {
        let (mut maker, mut rng) = maker(&["--duplicate-rate", "0.3"], 9);
        let body = String::from_utf8(maker.file_body(&mut rng, Utc::now(), 2_000)).unwrap();
        let lines: Vec<&str> = body.lines().skip(1).collect();
        let distinct: std::collections::HashSet<&str> = lines.iter().copied().collect();
        let repeats = lines.len() - distinct.len();
        assert!((400..800).contains(&repeats), "{repeats}");
    }

    #[test]
    fn late_rows_are_hours_old() {
        let now = Utc::now();
        let (mut maker, mut rng) = maker(&["--late-rate", "1"], 11);
        let body = maker.file_body(&mut rng, now, 100);
        let mut reader = RowReader::new(&body[..], "f.csv", "id", 0);
        while let Some(row) = reader.next_row().unwrap() {
            let event = validate(&row.row).unwrap();
            assert!(event.event_time < now - TimeDelta::hours(1));
        }
    }
}
