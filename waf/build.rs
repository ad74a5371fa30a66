//! Links libmodsecurity (pkg-config name `modsecurity`; Debian: `libmodsecurity-dev`, which
//! `cargo xtask setup` installs).

fn main() {
    if let Err(e) = pkg_config::Config::new()
        .atleast_version("3.0")
        .probe("modsecurity")
    {
        panic!(
            "libmodsecurity v3 not found ({e}); install it with `cargo xtask setup` (Debian: apt-get install libmodsecurity-dev)"
        );
    }
}
