//! An HTTP rule's `timeout`, `retries` and `fault`, validated as Istio validates them
//! (its wording where it has one) into the proxy's [`Policy`].

use std::time::Duration;

use super::Invalid;
use crate::diagnostic::Diagnostic;
use crate::load::{Loaded, istio};
use crate::route::policy::{Fault, Policy, Retry, RetryOn, parse_duration};

/// The problems found, by field: errors, and warnings for what lb does not enforce.
#[derive(Default)]
struct Found {
    errors: Vec<(String, Invalid)>,
    unenforced: Vec<(String, &'static str)>,
}

impl Found {
    fn error(&mut self, field: String, problem: Invalid) {
        self.errors.push((field, problem));
    }
}

/// The rule's policy; None if any part is invalid (the errors are in `diags`).
pub fn policy(
    l: &Loaded,
    base: &str,
    r: &istio::HttpRoute,
    diags: &mut Vec<Diagnostic>,
) -> Option<Policy> {
    let mut found = Found::default();
    let timeout = r
        .timeout
        .as_deref()
        .and_then(|t| duration(t, format!("{base}.timeout"), &mut found));
    let retry = match &r.retries {
        None => Retry::istio_default(),
        Some(x) => retry(x, &format!("{base}.retries"), &mut found),
    };
    let fault = match &r.fault {
        None => Fault::default(),
        Some(f) => fault(f, &format!("{base}.fault"), &mut found),
    };
    for (field, what) in found.unenforced {
        super::warn_unenforced_at(l, &field, what, diags);
    }
    let ok = found.errors.is_empty();
    for (field, problem) in found.errors {
        diags.push(Diagnostic::error(l.at(&field), field, problem));
    }
    ok.then_some(Policy {
        timeout,
        retry,
        fault,
    })
}

/// A duration of at least 1 ms (Istio's `ValidateDuration`).
fn duration(text: &str, field: String, found: &mut Found) -> Option<Duration> {
    checked_duration(text)
        .map_err(|e| found.error(field, e))
        .ok()
}

/// A duration of at least 1 ms, or what Istio says of it (every duration field of
/// VirtualServices and DestinationRules).
pub(super) fn checked_duration(text: &str) -> Result<Duration, Invalid> {
    match parse_duration(text) {
        None => Err(Invalid::BadDuration(text.to_string())),
        Some(d) if d < Duration::from_millis(1) => Err(Invalid::DurationTooShort),
        Some(d) => Ok(d),
    }
}

fn retry(x: &istio::HttpRetry, base: &str, found: &mut Found) -> Retry {
    let attempts = x.attempts.unwrap_or(0);
    if attempts < 0 {
        found.error(format!("{base}.attempts"), Invalid::NegativeAttempts);
    }
    if attempts == 0 {
        if x.per_try_timeout.is_some() || x.retry_on.is_some() {
            found.error(base.to_string(), Invalid::RetryDisabled);
        }
        return Retry::none();
    }
    let per_try = x
        .per_try_timeout
        .as_deref()
        .and_then(|t| duration(t, format!("{base}.perTryTimeout"), found));
    let on = match RetryOn::parse(
        x.retry_on
            .as_deref()
            .unwrap_or(crate::route::policy::ISTIO_DEFAULT_RETRY_ON),
    ) {
        Ok(on) => on,
        Err(bad) => {
            found.error(format!("{base}.retryOn"), Invalid::BadRetryOn(bad));
            RetryOn::default()
        }
    };
    if x.backoff.is_some() {
        found.unenforced.push((
            format!("{base}.backoff"),
            "retries.backoff (lb retries at once)",
        ));
    }
    Retry {
        attempts: u32::try_from(attempts).unwrap_or(0),
        per_try,
        on,
    }
}

/// A share in percent: `percentage.value`, or the deprecated integer `percent`.
/// Without either the fault never fires (Istio translates a missing share to 0 %).
fn share(
    p: Option<&istio::Percent>,
    percent: Option<i64>,
    field: String,
    found: &mut Found,
) -> f64 {
    let v = p
        .and_then(|p| p.value)
        .or_else(|| percent.map(|n| n as f64))
        .unwrap_or(0.0);
    if !(0.0..=100.0).contains(&v) {
        found.error(field, Invalid::Percentage(v.to_string()));
    }
    v
}

fn fault(f: &istio::HttpFaultInjection, base: &str, found: &mut Found) -> Fault {
    if f.delay.is_none() && f.abort.is_none() {
        found.error(base.to_string(), Invalid::EmptyFault);
    }
    let mut out = Fault::default();
    if let Some(d) = &f.delay {
        let b = format!("{base}.delay");
        let pct = share(
            d.percentage.as_ref(),
            d.percent,
            format!("{b}.percentage"),
            found,
        );
        if d.exponential_delay.is_some() {
            found.error(format!("{b}.exponentialDelay"), Invalid::ExponentialDelay);
        }
        match d.fixed_delay.as_deref() {
            Some(t) => {
                out.delay = duration(t, format!("{b}.fixedDelay"), found).map(|d| (d, pct));
            }
            None if d.exponential_delay.is_none() => found.error(b, Invalid::NoFixedDelay),
            None => {}
        }
    }
    if let Some(a) = &f.abort {
        let b = format!("{base}.abort");
        let pct = share(
            a.percentage.as_ref(),
            None,
            format!("{b}.percentage"),
            found,
        );
        match a.http_status {
            Some(s @ 200..=599) => out.abort = Some((s as u16, pct)),
            Some(_) => found.error(format!("{b}.httpStatus"), Invalid::AbortStatus),
            None if a.grpc_status.is_some() => found
                .unenforced
                .push((format!("{b}.grpcStatus"), "fault.abort.grpcStatus")),
            None if a.http2_error.is_some() => found
                .unenforced
                .push((format!("{b}.http2Error"), "fault.abort.http2Error")),
            None => found.error(format!("{b}.httpStatus"), Invalid::AbortStatus),
        }
    }
    out
}
