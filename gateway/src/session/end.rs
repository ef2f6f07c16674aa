//! How a session ended, said once for every session: logged in (the step
//! after the login then runs), or why not. Each end is logged by the
//! driver and counted in `mailgate_sessions_ended_total`.

/// Why the dialogue before the login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A login succeeded: the dialect's step after the login follows.
    LoggedIn,
    /// No login within the pre-auth timeout, or the client did not read
    /// its replies in that time.
    Timeout,
    /// The client left: it closed the connection, broke it, or said
    /// LOGOUT / QUIT.
    ClientClosed,
    /// Too many failed logins on this connection.
    TooManyFailures,
    /// The TLS handshake (implicit TLS, STARTTLS, STLS) failed or timed out.
    TlsFailed,
    /// The gateway closed it: input over the limits, or not the mail
    /// protocol at all (an HTTP request from a web page).
    Refused,
}

impl End {
    /// Every end, in the order the metrics list them.
    pub const ALL: [End; 6] = [
        End::LoggedIn,
        End::Timeout,
        End::ClientClosed,
        End::TooManyFailures,
        End::TlsFailed,
        End::Refused,
    ];

    /// The `reason` label of `mailgate_sessions_ended_total`.
    pub fn label(self) -> &'static str {
        match self {
            End::LoggedIn => "logged_in",
            End::Timeout => "timeout",
            End::ClientClosed => "client_closed",
            End::TooManyFailures => "too_many_failures",
            End::TlsFailed => "tls_failed",
            End::Refused => "refused",
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
