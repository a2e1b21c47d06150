//! The retry decision, pure: what went wrong with one attempt, and what may be done about
//! it. The client sleeps and counts; this says whether.

/// How one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request never left (no connection).
    Unsent,
    /// It may have reached the server, but no answer came (timeout, dropped connection).
    Unanswered,
    /// The server answered with this status.
    Status(u16),
    /// The answer's body was cut short or is not JSON.
    BadBody,
    /// A write the sender's fence held back: its claim may end before the answer.
    Fenced,
    /// No token to send it with; `transient` when getting one failed on the network, a 429
    /// or a 5xx, not because the key was refused.
    Token { transient: bool },
}

/// What the call does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait (Retry-After, else backoff) and send again.
    Retry,
    /// Fetch a new token and send again; does not count as an attempt.
    Renew,
    Stop,
}

/// The call being decided on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// A read: sending it twice is harmless even if the first one landed.
    pub read: bool,
    /// No attempt is left.
    pub last: bool,
    /// The token was already renewed once for this call.
    pub renewed: bool,
}

/// A 401 renews the token once; otherwise, while attempts are left: a request that never
/// left is sent again, one that may have landed only if it is a read (a write answered
/// late, or 5xx by a gateway after the server applied it, would land twice), 429 always.
/// A write the fence held back was never sent, and is not sent again either.
pub(crate) fn decide(failure: Failure, a: Attempt) -> Next {
    match failure {
        Failure::Status(401) if !a.renewed => Next::Renew,
        _ if a.last => Next::Stop,
        Failure::Unsent | Failure::Token { transient: true } => Next::Retry,
        Failure::Unanswered | Failure::BadBody if a.read => Next::Retry,
        Failure::Status(429) => Next::Retry,
        Failure::Status(s) if s >= 500 && a.read => Next::Retry,
        _ => Next::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Attempt = Attempt {
        read: true,
        last: false,
        renewed: false,
    };
    const WRITE: Attempt = Attempt {
        read: false,
        last: false,
        renewed: false,
    };

    #[test]
    fn what_may_be_sent_again() {
        assert_eq!(decide(Failure::Unsent, WRITE), Next::Retry);
        assert_eq!(decide(Failure::Unanswered, READ), Next::Retry);
        assert_eq!(decide(Failure::Unanswered, WRITE), Next::Stop);
        assert_eq!(decide(Failure::BadBody, READ), Next::Retry);
        assert_eq!(decide(Failure::BadBody, WRITE), Next::Stop);
        assert_eq!(decide(Failure::Status(503), READ), Next::Retry);
        assert_eq!(decide(Failure::Status(502), WRITE), Next::Stop);
        assert_eq!(decide(Failure::Status(429), WRITE), Next::Retry);
        assert_eq!(decide(Failure::Fenced, WRITE), Next::Stop);
        assert_eq!(decide(Failure::Status(404), READ), Next::Stop);
        assert_eq!(decide(Failure::Status(302), READ), Next::Stop);
    }

    #[test]
    fn a_token_is_fetched_again_only_after_a_transient_failure() {
        let transient = Failure::Token { transient: true };
        let refused = Failure::Token { transient: false };
        assert_eq!(decide(transient, WRITE), Next::Retry);
        assert_eq!(decide(refused, READ), Next::Stop);
        assert_eq!(
            decide(transient, Attempt { last: true, ..READ }),
            Next::Stop
        );
    }

    #[test]
    fn a_401_renews_once_even_on_the_last_attempt() {
        let last = Attempt { last: true, ..READ };
        assert_eq!(decide(Failure::Status(401), last), Next::Renew);
        let renewed = Attempt {
            renewed: true,
            ..READ
        };
        assert_eq!(decide(Failure::Status(401), renewed), Next::Stop);
        assert_eq!(decide(Failure::Status(429), last), Next::Stop);
        assert_eq!(decide(Failure::Unsent, last), Next::Stop);
    }
}
