//! What operators look at, apart from the services that do the work: the live dashboard (served
//! by a consumer, or by `consumer --dashboard-only`) and the `status` command. Both read what the
//! consumer writes to PostgreSQL; the dashboard also shows the figures of the consumer serving it.

pub mod dashboard;
