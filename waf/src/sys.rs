//! libmodsecurity v3's C API, as `modsecurity/{modsecurity,rules_set,transaction,intervention}.h`
//! of 3.0.9 declare it: only the functions the engine calls.
//!
//! Ownership, from the library's sources: `msc_rules_add*` set `*error` to a `strdup`'d string on
//! failure, and an intervention's `url` and `log` are `strdup`'d; the caller frees them with
//! `free` (never Rust's allocator).

use libc::{c_char, c_int, c_uchar, c_void, size_t};

#[repr(C)]
pub struct ModSecurity {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RulesSet {
    _private: [u8; 0],
}

#[repr(C)]
pub struct Transaction {
    _private: [u8; 0],
}

/// `ModSecurityIntervention`: what the rules ask the connector to do.
#[repr(C)]
pub struct Intervention {
    pub status: c_int,
    pub pause: c_int,
    pub url: *mut c_char,
    pub log: *mut c_char,
    pub disruptive: c_int,
}

/// `ModSecLogCb`: called with the transaction's `logCbData` and, as `msc_set_log_cb` sets it
/// up, a NUL-terminated text line per rule match.
pub type LogCallback = extern "C" fn(data: *mut c_void, message: *const c_void);

#[link(name = "modsecurity")]
unsafe extern "C" {
    pub fn msc_init() -> *mut ModSecurity;
    pub fn msc_set_connector_info(msc: *mut ModSecurity, connector: *const c_char);
    pub fn msc_set_log_cb(msc: *mut ModSecurity, cb: LogCallback);
    pub fn msc_cleanup(msc: *mut ModSecurity);

    pub fn msc_create_rules_set() -> *mut RulesSet;
    pub fn msc_rules_add_file(
        rules: *mut RulesSet,
        file: *const c_char,
        error: *mut *const c_char,
    ) -> c_int;
    pub fn msc_rules_add(
        rules: *mut RulesSet,
        plain_rules: *const c_char,
        error: *mut *const c_char,
    ) -> c_int;
    pub fn msc_rules_cleanup(rules: *mut RulesSet) -> c_int;

    pub fn msc_new_transaction(
        ms: *mut ModSecurity,
        rules: *mut RulesSet,
        log_cb_data: *mut c_void,
    ) -> *mut Transaction;
    pub fn msc_process_connection(
        transaction: *mut Transaction,
        client: *const c_char,
        client_port: c_int,
        server: *const c_char,
        server_port: c_int,
    ) -> c_int;
    pub fn msc_process_uri(
        transaction: *mut Transaction,
        uri: *const c_char,
        protocol: *const c_char,
        http_version: *const c_char,
    ) -> c_int;
    pub fn msc_add_n_request_header(
        transaction: *mut Transaction,
        key: *const c_uchar,
        len_key: size_t,
        value: *const c_uchar,
        len_value: size_t,
    ) -> c_int;
    pub fn msc_process_request_headers(transaction: *mut Transaction) -> c_int;
    pub fn msc_append_request_body(
        transaction: *mut Transaction,
        body: *const c_uchar,
        size: size_t,
    ) -> c_int;
    pub fn msc_process_request_body(transaction: *mut Transaction) -> c_int;
    pub fn msc_add_n_response_header(
        transaction: *mut Transaction,
        key: *const c_uchar,
        len_key: size_t,
        value: *const c_uchar,
        len_value: size_t,
    ) -> c_int;
    pub fn msc_process_response_headers(
        transaction: *mut Transaction,
        code: c_int,
        protocol: *const c_char,
    ) -> c_int;
    pub fn msc_append_response_body(
        transaction: *mut Transaction,
        body: *const c_uchar,
        size: size_t,
    ) -> c_int;
    pub fn msc_process_response_body(transaction: *mut Transaction) -> c_int;
    pub fn msc_intervention(transaction: *mut Transaction, it: *mut Intervention) -> c_int;
    pub fn msc_process_logging(transaction: *mut Transaction) -> c_int;
    pub fn msc_update_status_code(transaction: *mut Transaction, status: c_int) -> c_int;
    pub fn msc_transaction_cleanup(transaction: *mut Transaction);
}
