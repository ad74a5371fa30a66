//! One libmodsecurity instance with one loaded rule set, and the evaluation of a request through
//! it. Loading CRS 4 takes about a second and ~40 MB, so the proxy loads one engine per distinct
//! configuration and shares it; an evaluation takes about a millisecond of CPU and blocks, so
//! callers run it off the async executor's threads.

use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use libc::{c_char, c_void};
use rampart_common::reason::WafReason;

use crate::config::{CrsLayout, ExtraRules, Profile};
use crate::matches::RuleMatch;
use crate::{WafError, sys};

/// What the engine is told of one request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub method: &'a str,
    /// The request target as received (path and query, not normalised).
    pub uri: &'a str,
    /// `1.0`, `1.1` or `2.0` (the engine wants the number, not `HTTP/1.1`).
    pub http_version: &'a str,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// The body, or its first `body_limit` bytes (see [`Engine::evaluate`] for how the engine
    /// tells a body cut at the limit from a whole one).
    pub body: &'a [u8],
}

/// The engine's verdict on one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// The rules asked to interrupt the request (CRS: the anomaly score reached the threshold;
    /// this crate's request body checks: a body that could not be parsed).
    pub disruptive: bool,
    /// The status the rules asked for: 403 from CRS, 400 from the request body checks
    /// ([`REQUEST_BODY_ERROR_RULE_ID`](crate::config::REQUEST_BODY_ERROR_RULE_ID) and the
    /// multipart ones, group `request-body-error` or `multipart-strict-error`).
    pub status: u16,
    /// Every rule that matched, in order.
    pub matched: Vec<RuleMatch>,
    /// The inbound anomaly score, when a blocking-evaluation rule reported it.
    pub anomaly_score: Option<u32>,
}

impl Evaluation {
    /// The matched rule ids, without the blocking-evaluation rules (949xxx, 959xxx, 980xxx).
    pub fn rule_ids(&self) -> Vec<u32> {
        self.matched
            .iter()
            .map(|m| m.id)
            .filter(|id| !matches!(id / 1000, 949 | 959 | 980))
            .collect()
    }

    /// The rule group of the detection rule that interrupted the request itself, when one did
    /// (a body that could not be parsed is `request-body-error`, whatever else matched before);
    /// else of the most severe matched detection rule, the first of equals (`other` when none):
    /// a critical SQL injection names the request, not a warning about its Host.
    pub fn group(&self) -> WafReason {
        let detections = || {
            self.matched
                .iter()
                .filter(|m| !matches!(m.id / 1000, 949 | 959 | 980))
        };
        if let Some(by) = detections().find(|m| m.disruptive) {
            return by.group();
        }
        detections()
            .min_by_key(|m| m.severity.unwrap_or(u8::MAX))
            .map_or(WafReason::Other, RuleMatch::group)
    }
}

/// Held while rules load or are freed: the library's rule parser (bison/flex) keeps global
/// state, and two loads at once corrupt the heap (seen here as `malloc_consolidate(): invalid
/// chunk size`).
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A loaded engine. Dropping it frees the rules and the library instance (under [`LOADING`]).
pub struct Engine {
    raw: Option<Raw>,
    /// The profile's `body_limit`, the engine's `SecRequestBodyLimit`.
    body_limit: usize,
}

/// The library's instance and rule set; freed on drop by whoever holds [`LOADING`].
struct Raw {
    msc: NonNull<sys::ModSecurity>,
    rules: NonNull<sys::RulesSet>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: both were created by `Engine::load` and are freed once, here.
        unsafe {
            sys::msc_rules_cleanup(self.rules.as_ptr());
            sys::msc_cleanup(self.msc.as_ptr());
        }
    }
}

// SAFETY: after loading, the rule set is only read: libmodsecurity's connectors (nginx workers,
// Envoy's filter) share one `RulesSet` and one `ModSecurity` across threads and give each
// request its own `Transaction`, which is what `evaluate` does; the transaction never leaves the
// calling thread.
unsafe impl Send for Engine {}
// SAFETY: as above; `&Engine` only creates transactions.
unsafe impl Sync for Engine {}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _one_at_a_time = LOADING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(self.raw.take());
    }
}

/// Collects one transaction's log lines (the callback's `data`).
#[derive(Default)]
struct Collected {
    matched: Vec<RuleMatch>,
}

extern "C" fn on_log(data: *mut c_void, message: *const c_void) {
    if data.is_null() || message.is_null() {
        return;
    }
    // SAFETY: `data` is the `Collected` that `evaluate` passed to `msc_new_transaction`, alive
    // and used by this thread only while the transaction runs; `message` is a NUL-terminated
    // line (the text log property `msc_set_log_cb` sets up). Parsing never panics.
    let (collected, line) = unsafe {
        (
            &mut *data.cast::<Collected>(),
            CStr::from_ptr(message.cast::<c_char>()),
        )
    };
    tracing::trace!(line = %line.to_string_lossy(), "waf: match");
    if let Some(m) = RuleMatch::parse(&line.to_string_lossy()) {
        collected.matched.push(m);
    }
}

impl Engine {
    /// Loads the CRS at `crs` with `profile`. Errors name the file the library refused, or the
    /// audit log that cannot be opened (the library would accept it and drop every record).
    pub fn load(crs: &CrsLayout, profile: &Profile) -> Result<Engine, WafError> {
        if let Some(log) = &profile.audit {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log.path)
                .map_err(|e| WafError::Rules {
                    origin: log.path.display().to_string(),
                    problem: format!("the audit log cannot be opened: {e}"),
                })?;
        }
        let _one_at_a_time = LOADING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: no preconditions; a null result is handled.
        let msc = NonNull::new(unsafe { sys::msc_init() }).ok_or(WafError::Init)?;
        // SAFETY: as above.
        let Some(rules) = NonNull::new(unsafe { sys::msc_create_rules_set() }) else {
            // SAFETY: created above, freed once.
            unsafe { sys::msc_cleanup(msc.as_ptr()) };
            return Err(WafError::Init);
        };
        // Freed without taking the lock again if loading fails below.
        let raw = Raw { msc, rules };
        let connector = c"rampart";
        // SAFETY: a live instance; the strings are NUL-terminated and copied by the library; the
        // callback is a plain function.
        unsafe {
            sys::msc_set_connector_info(msc.as_ptr(), connector.as_ptr());
            sys::msc_set_log_cb(msc.as_ptr(), on_log);
        }
        raw.add_text("the engine's settings", &profile.base_rules())?;
        raw.add_file(&crs.setup)?;
        raw.add_text("the profile's variables", &profile.variables())?;
        for file in &crs.rules {
            raw.add_file(file)?;
        }
        let exclusions = profile.exclusions();
        if !exclusions.is_empty() {
            raw.add_text("the rule exclusions", &exclusions)?;
        }
        for extra in &profile.extra {
            match extra {
                ExtraRules::Inline(text) => raw.add_text("the extra rules", text)?,
                ExtraRules::File(path) => raw.add_file(path)?,
            }
        }
        Ok(Engine {
            raw: Some(raw),
            body_limit: profile.body_limit,
        })
    }

    fn raw(&self) -> Result<&Raw, WafError> {
        self.raw.as_ref().ok_or(WafError::Init)
    }
}

impl Raw {
    fn add_text(&self, what: &str, text: &str) -> Result<(), WafError> {
        let c = CString::new(text).map_err(|_| WafError::Rules {
            origin: what.to_owned(),
            problem: "contains a NUL byte".into(),
        })?;
        let mut error: *const c_char = std::ptr::null();
        // SAFETY: a live rule set, a NUL-terminated string, an out-pointer the library sets.
        let rc = unsafe { sys::msc_rules_add(self.rules.as_ptr(), c.as_ptr(), &mut error) };
        check(rc, error, what)
    }

    fn add_file(&self, path: &Path) -> Result<(), WafError> {
        let what = path.display().to_string();
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| WafError::Rules {
            origin: what.clone(),
            problem: "a path with a NUL byte".into(),
        })?;
        let mut error: *const c_char = std::ptr::null();
        // SAFETY: as in `add_text`.
        let rc = unsafe { sys::msc_rules_add_file(self.rules.as_ptr(), c.as_ptr(), &mut error) };
        check(rc, error, &what)
    }
}

impl Engine {
    /// Runs the request phases (connection, URI, headers, body; the body phase runs even without
    /// a body, where CRS decides) and returns what matched. Stops at the first interruption.
    ///
    /// A body longer than the profile's `body_limit` is cut there by the engine
    /// (`ProcessPartial`), which records the cut (`INBOUND_DATA_ERROR`). So is a body of exactly
    /// `body_limit` bytes shorter than the request's `Content-Length` (one, without
    /// `Transfer-Encoding`): the caller gave the engine the prefix of a longer body (its one
    /// byte more, which the engine drops, marks the cut). Without that mark a body is taken as
    /// whole, and a JSON body whose end is missing is refused as unparsable (a chunked body the
    /// caller cut). See [`Profile::base_rules`] for what a cut body is refused for.
    pub fn evaluate(&self, request: &Request<'_>) -> Result<Evaluation, WafError> {
        let (live, interrupted) = self.request_phases(request)?;
        Ok(live.finish(interrupted))
    }

    /// Like [`Engine::evaluate`], and when the request was not interrupted, the transaction kept
    /// open for its response ([`Exchange::respond`]): the response rules see the request's
    /// variables, as CRS expects.
    pub fn exchange(
        self: &Arc<Self>,
        request: &Request<'_>,
    ) -> Result<(Evaluation, Option<Exchange>), WafError> {
        let (mut live, interrupted) = self.request_phases(request)?;
        if interrupted.is_some() {
            return Ok((live.finish(interrupted), None));
        }
        let evaluation = live.take(None);
        let open = Exchange {
            live: Some(live),
            _engine: Arc::clone(self),
        };
        Ok((evaluation, Some(open)))
    }

    fn request_phases(&self, request: &Request<'_>) -> Result<(Live, Option<u16>), WafError> {
        let text = |what: &str, s: &str| {
            CString::new(s).map_err(|_| WafError::Input(format!("{what} contains a NUL byte")))
        };
        let client = text("client", &request.client.ip().to_canonical().to_string())?;
        let server = text("server", &request.server.ip().to_canonical().to_string())?;
        let uri = text("the request target", request.uri)?;
        let method = text("the method", request.method)?;
        let version = text("the HTTP version", request.http_version)?;
        let cut_by_caller = self.body_limit > 0
            && request.body.len() == self.body_limit
            && content_length(request.headers).is_some_and(|n| n > request.body.len() as u64);
        let raw = self.raw()?;
        let mut collected = Box::new(Collected::default());
        // SAFETY: live instance and rules; `collected` is boxed (its address stays put) and
        // freed after the transaction (`Live`'s field order), and is only touched by the
        // callback on the thread that drives the transaction.
        let raw = unsafe {
            sys::msc_new_transaction(
                raw.msc.as_ptr(),
                raw.rules.as_ptr(),
                std::ptr::from_mut::<Collected>(&mut collected).cast::<c_void>(),
            )
        };
        let mut live = Live {
            tx: Transaction(NonNull::new(raw).ok_or(WafError::Init)?),
            collected,
        };
        let phases: [&dyn Fn(*mut sys::Transaction); 4] = [
            // SAFETY (all four): a live transaction; strings NUL-terminated and alive for the
            // call; header and body slices valid for their lengths.
            &|t| unsafe {
                sys::msc_process_connection(
                    t,
                    client.as_ptr(),
                    i32::from(request.client.port()),
                    server.as_ptr(),
                    i32::from(request.server.port()),
                );
            },
            &|t| unsafe {
                sys::msc_process_uri(t, uri.as_ptr(), method.as_ptr(), version.as_ptr());
            },
            &|t| unsafe {
                for (name, value) in request.headers {
                    sys::msc_add_n_request_header(
                        t,
                        name.as_ptr(),
                        name.len(),
                        value.as_ptr(),
                        value.len(),
                    );
                }
                sys::msc_process_request_headers(t);
            },
            &|t| unsafe {
                if !request.body.is_empty() {
                    sys::msc_append_request_body(t, request.body.as_ptr(), request.body.len());
                }
                if cut_by_caller {
                    // Past the limit: dropped (`ProcessPartial`), the cut recorded.
                    sys::msc_append_request_body(t, b" ".as_ptr(), 1);
                }
                sys::msc_process_request_body(t);
            },
        ];
        let interrupted = live.run(&phases);
        Ok((live, interrupted))
    }
}

/// What the engine is told of one response.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub status: u16,
    /// `1.0`, `1.1` or `2.0`.
    pub http_version: &'a str,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// The body, or its first `response_body_limit` bytes.
    pub body: &'a [u8],
}

/// A request the engine let through, its transaction open for the response. Owns what it
/// needs: it may move to another thread between the request and the response (never used by
/// two at once). Dropping it ends the transaction (its logging phase included: the audit log
/// records a request whose response was never judged too).
pub struct Exchange {
    live: Option<Live>,
    /// The rules outlive the transaction (`live` is ended in `drop`, before the fields).
    _engine: Arc<Engine>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            let _ = live.finish(None);
        }
    }
}

// SAFETY: the transaction and its log buffer are owned by this value alone and used by one
// thread at a time (`respond` takes `self`); libmodsecurity transactions have no thread
// affinity (connectors hand them between worker threads).
unsafe impl Send for Exchange {}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").finish_non_exhaustive()
    }
}

impl Exchange {
    /// Runs the response phases (headers, body) and returns what matched in them. Stops at the
    /// first interruption (CRS: the outbound anomaly score reached its threshold).
    pub fn respond(mut self, response: &Response<'_>) -> Result<Evaluation, WafError> {
        let mut live = self.live.take().ok_or(WafError::Init)?;
        let protocol = CString::new(format!("HTTP/{}", response.http_version))
            .map_err(|_| WafError::Input("the HTTP version contains a NUL byte".into()))?;
        let status = i32::from(response.status);
        let phases: [&dyn Fn(*mut sys::Transaction); 2] = [
            // SAFETY (both): a live transaction; the protocol string is NUL-terminated and
            // alive for the call; header and body slices valid for their lengths.
            &|t| unsafe {
                for (name, value) in response.headers {
                    sys::msc_add_n_response_header(
                        t,
                        name.as_ptr(),
                        name.len(),
                        value.as_ptr(),
                        value.len(),
                    );
                }
                sys::msc_process_response_headers(t, status, protocol.as_ptr());
            },
            &|t| unsafe {
                if !response.body.is_empty() {
                    sys::msc_append_response_body(t, response.body.as_ptr(), response.body.len());
                }
                sys::msc_process_response_body(t);
            },
        ];
        let interrupted = live.run(&phases);
        Ok(live.finish(interrupted))
    }
}

/// A transaction and the buffer its log callback writes to. Fields drop in order: the
/// transaction (whose logging phase still writes matches) before the buffer.
struct Live {
    tx: Transaction,
    collected: Box<Collected>,
}

impl Live {
    /// Runs `phases` until one ends in a disruptive intervention; its status.
    fn run(&mut self, phases: &[&dyn Fn(*mut sys::Transaction)]) -> Option<u16> {
        for phase in phases {
            phase(self.tx.0.as_ptr());
            if let Some((status, by)) = self.tx.intervention() {
                self.collected.matched.extend(by);
                return Some(status);
            }
        }
        None
    }

    /// The matches collected so far as an evaluation (and the buffer emptied).
    fn take(&mut self, interrupted: Option<u16>) -> Evaluation {
        let matched = std::mem::take(&mut self.collected.matched);
        let anomaly_score = matched.iter().rev().find_map(RuleMatch::total_score);
        Evaluation {
            disruptive: interrupted.is_some(),
            status: interrupted.unwrap_or(200),
            matched,
            anomaly_score,
        }
    }

    /// Ends the transaction (its logging phase included, with the status the proxy answers
    /// when the rules interrupted it) and returns what matched.
    fn finish(mut self, interrupted: Option<u16>) -> Evaluation {
        // SAFETY: a live transaction.
        unsafe {
            if let Some(status) = interrupted {
                sys::msc_update_status_code(self.tx.0.as_ptr(), i32::from(status));
            }
            sys::msc_process_logging(self.tx.0.as_ptr());
        }
        let evaluation = self.take(interrupted);
        drop(self);
        evaluation
    }
}

/// A transaction, cleaned up on drop.
struct Transaction(NonNull<sys::Transaction>);

impl Transaction {
    /// The status of a disruptive intervention the rules asked for, and the match line of the
    /// rule that asked (the library reports it here, not through the log callback).
    fn intervention(&self) -> Option<(u16, Option<RuleMatch>)> {
        let mut it = sys::Intervention {
            status: 200,
            pause: 0,
            url: std::ptr::null_mut(),
            log: std::ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: a live transaction and an initialised intervention; the strings it may set
        // are malloc'd by the library and freed here with `free`.
        let (asked, line) = unsafe {
            let asked = sys::msc_intervention(self.0.as_ptr(), &mut it);
            let line =
                (!it.log.is_null()).then(|| CStr::from_ptr(it.log).to_string_lossy().into_owned());
            libc::free(it.url.cast());
            libc::free(it.log.cast());
            (asked, line)
        };
        (asked != 0 && it.disruptive != 0).then(|| {
            (
                u16::try_from(it.status).unwrap_or(403),
                line.as_deref().and_then(RuleMatch::parse),
            )
        })
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // SAFETY: created by `msc_new_transaction`, freed once, here.
        unsafe { sys::msc_transaction_cleanup(self.0.as_ptr()) };
    }
}

/// The length the request's headers declare: `None` unless there is exactly one
/// `Content-Length`, all digits, and no `Transfer-Encoding` (which overrides it, RFC 9112 6.3:
/// hyper keeps a `Content-Length` sent before it).
fn content_length(headers: &[(&[u8], &[u8])]) -> Option<u64> {
    if headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding"))
    {
        return None;
    }
    let mut values = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"content-length"))
        .map(|(_, value)| value);
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A rules call's result: `rc < 0` is an error whose text the library `strdup`'d.
fn check(rc: libc::c_int, error: *const c_char, source: &str) -> Result<(), WafError> {
    if rc >= 0 {
        return Ok(());
    }
    let problem = if error.is_null() {
        "rejected".to_owned()
    } else {
        // SAFETY: a NUL-terminated string the library allocated with malloc; read, then freed.
        unsafe {
            let text = CStr::from_ptr(error).to_string_lossy().trim().to_owned();
            libc::free(error.cast_mut().cast());
            text
        }
    };
    Err(WafError::Rules {
        origin: source.to_owned(),
        problem,
    })
}
