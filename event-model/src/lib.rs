//! The ecommerce event and its data contract.
//!
//! Everything that decides whether a CSV row is a valid event lives here, so the bridge, the consumer,
//! the generator and the tests all agree on one set of rules:
//! - [`reader`] turns CSV bytes into [`RawRow`]s (header mapping, field counts, UTF-8), never judging values;
//! - [`validate`] turns a [`RawRow`] into an [`Event`] or a [`Rejection`] that names the field and the problem;
//! - [`wire`] is the message format on the Kafka topic.

pub mod event;
pub mod reader;
pub mod reason;
pub mod validate;
pub mod wire;

pub use event::{Column, Event, EventType, COLUMNS};
pub use reader::{Limits, ReadError, RowReader, RowView};
pub use validate::{validate, RejectCode, Rejection};
pub use wire::{
    decode_pipeline_message, DecodedRow, Defect, FileEnd, PipelineMessage, RawRow, RowRef,
    WireFormat,
};
