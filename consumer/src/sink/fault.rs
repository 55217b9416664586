//! What a database error means for the batch that met it: the data refused, or the connection.

/// What a database error says about the batch that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The data was refused (SQLSTATE classes 22 data exception, 23 integrity constraint, 54
    /// program limit such as an oversized index entry): retrying cannot help, the row that caused
    /// it is quarantined.
    Data,
    /// The connection or the server failed, or said to wait (classes 08, 53, 57, 58,
    /// serialization failures, deadlocks and lock timeouts, and any error below SQL such as I/O
    /// or TLS): retried with backoff.
    Connection,
    /// Anything else (a missing privilege, a broken schema): retried with backoff and reported,
    /// since an operator must act.
    Other,
}

pub fn fault_of(error: &sqlx::Error) -> Fault {
    let Some(database) = error.as_database_error() else {
        return match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Fault::Connection,
            _ => Fault::Other,
        };
    };
    let code = database.code().unwrap_or_default();
    match code.get(..2).unwrap_or_default() {
        "22" | "23" | "54" => Fault::Data,
        "08" | "53" | "57" | "58" => Fault::Connection,
        "40" if code == "40001" || code == "40P01" => Fault::Connection,
        // lock_not_available: a `lock_timeout` ran out behind someone else's lock (an
        // `aggregates rebuild`, a `CREATE INDEX`, an operator's `LOCK`). A wait, never the row's
        // fault.
        "55" if code == "55P03" => Fault::Connection,
        _ => Fault::Other,
    }
}

/// A refusal the database gave for what it was asked, not a failure of the connection or the
/// server: any SQLSTATE but those of [`Fault::Connection`] (a trigger's `RAISE EXCEPTION`, a
/// custom code, a row-level security policy, a constraint). It may be caused by one row, so the
/// batch is narrowed down to find out.
pub fn refused_by_database(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some() && fault_of(error) != Fault::Connection
}
