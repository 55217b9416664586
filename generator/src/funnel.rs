//! The shopper model: a catalog where each product keeps its price, and users whose sessions move
//! through the funnel view -> add_to_cart -> purchase, sometimes removing items again.

use chrono::{DateTime, TimeDelta, Utc};
use event_model::{Event, EventType};
use rand::rngs::StdRng;
use rand::Rng;

const CATALOG_SIZE: usize = 500;
const USER_COUNT: i32 = 20_000;
const ACTIVE_SESSIONS: usize = 200;
const FIRST_PRODUCT_ID: i32 = 1_000;

struct Session {
    user_id: i32,
    viewing: Option<usize>,
    cart: Vec<usize>,
}

pub struct Shop {
    prices_cents: Vec<i64>,
    sessions: Vec<Session>,
}

impl Shop {
    pub fn new(rng: &mut StdRng) -> Shop {
        // Prices spread over three orders of magnitude, like a real catalog.
        let prices_cents = (0..CATALOG_SIZE)
            .map(|_| {
                let dollars = 10f64.powf(rng.random_range(0.0..3.0));
                (dollars * 100.0).round() as i64 - 1
            })
            .collect();
        Shop {
            prices_cents,
            sessions: Vec::new(),
        }
    }

    /// The next event of a random shopper, at `now`.
    pub fn next_event(&mut self, rng: &mut StdRng, now: DateTime<Utc>) -> Event {
        if self.sessions.len() < ACTIVE_SESSIONS || rng.random_bool(0.02) {
            let user_id = rng.random_range(1..=USER_COUNT);
            self.sessions.push(Session {
                user_id,
                viewing: None,
                cart: Vec::new(),
            });
        }
        let index = rng.random_range(0..self.sessions.len());
        let session = &mut self.sessions[index];
        let roll: f64 = rng.random();
        let (event_type, product, session_over) = match (session.viewing, session.cart.is_empty()) {
            (Some(product), _) if roll < 0.3 => {
                session.cart.push(product);
                session.viewing = None;
                (EventType::AddToCart, product, false)
            }
            (_, false) if roll < 0.4 => {
                let product = session.cart[rng.random_range(0..session.cart.len())];
                (EventType::Purchase, product, true)
            }
            (_, false) if roll < 0.45 => {
                let at = rng.random_range(0..session.cart.len());
                (
                    EventType::RemoveFromCart,
                    session.cart.swap_remove(at),
                    false,
                )
            }
            _ => {
                // Popular products get most views: the square skews towards the low indexes.
                let product = (rng.random::<f64>().powi(2) * CATALOG_SIZE as f64) as usize;
                session.viewing = Some(product);
                (EventType::View, product, rng.random_bool(0.05))
            }
        };
        let user_id = session.user_id;
        if session_over {
            self.sessions.swap_remove(index);
        }
        Event {
            event_id: uuid_v4(rng),
            user_id,
            event_type,
            product_id: FIRST_PRODUCT_ID + product as i32,
            price_cents: self.prices_cents[product],
            event_time: now - TimeDelta::milliseconds(rng.random_range(0..2_000)),
        }
    }
}

/// A random (version 4) UUID drawn from the seeded generator, so `--seed` reproduces event ids.
pub fn uuid_v4(rng: &mut StdRng) -> String {
    let mut bytes: [u8; 16] = rng.random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = event_model::wire::to_hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashMap;

    #[test]
    fn products_keep_their_price_and_the_funnel_narrows() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut shop = Shop::new(&mut rng);
        let now = Utc::now();
        let mut prices = HashMap::new();
        let mut counts: HashMap<EventType, usize> = HashMap::new();
        for _ in 0..20_000 {
            let event = shop.next_event(&mut rng, now);
            assert_eq!(
                *prices.entry(event.product_id).or_insert(event.price_cents),
                event.price_cents
            );
            assert!(event.event_time <= now && event.event_time > now - TimeDelta::seconds(3));
            *counts.entry(event.event_type).or_default() += 1;
        }
        let views = counts[&EventType::View];
        let carts = counts[&EventType::AddToCart];
        let purchases = counts[&EventType::Purchase];
        assert!(
            views > carts && carts > purchases && purchases > 0,
            "{counts:?}"
        );
        assert!(counts[&EventType::RemoveFromCart] > 0);
    }

    #[test]
    fn uuids_are_version_4_and_reproducible() {
        let id = uuid_v4(&mut StdRng::seed_from_u64(1));
        assert_eq!(id, uuid_v4(&mut StdRng::seed_from_u64(1)));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
