use chrono::{DateTime, Utc};
use std::fmt;

/// The six columns of the contract, in their canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    EventId,
    UserId,
    EventType,
    ProductId,
    Price,
    EventTime,
}

pub const COLUMNS: [Column; 6] = [
    Column::EventId,
    Column::UserId,
    Column::EventType,
    Column::ProductId,
    Column::Price,
    Column::EventTime,
];

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::EventId => "event_id",
            Column::UserId => "user_id",
            Column::EventType => "event_type",
            Column::ProductId => "product_id",
            Column::Price => "price",
            Column::EventTime => "event_time",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Matches a header cell: case-insensitive, surrounding spaces ignored.
    pub fn from_header(cell: &str) -> Option<Column> {
        let cell = cell.trim();
        COLUMNS
            .into_iter()
            .find(|column| column.name().eq_ignore_ascii_case(cell))
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    View,
    AddToCart,
    RemoveFromCart,
    Purchase,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::View,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::Purchase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
        }
    }

    /// Case-insensitive, as the contract says; the stored form is [`EventType::as_str`].
    pub fn parse(value: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(value))
    }
}

/// A validated event, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub user_id: i32,
    pub event_type: EventType,
    pub product_id: i32,
    /// Price in cents: exact, no floating point anywhere on the path.
    pub price_cents: i64,
    /// Kept to the microsecond, as PostgreSQL stores it.
    pub event_time: DateTime<Utc>,
}

/// Formats cents as the plain decimal PostgreSQL's NUMERIC reads, e.g. `1234` -> `12.34`.
pub fn format_price(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
