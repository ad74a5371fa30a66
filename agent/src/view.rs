//! A value one writer publishes and many read, seen through a projection. The controller
//! publishes whole policy generations; a lower layer (the proxy, the flow hub) takes a
//! [`View`] of the part it needs, so it never names the type published above it.

use std::sync::Arc;

/// Reads the current value of something published elsewhere; cheap to clone and to call.
pub struct View<T>(Arc<dyn Fn() -> T + Send + Sync>);

impl<T> Clone for View<T> {
    fn clone(&self) -> View<T> {
        View(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for View<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}

impl<T> View<T> {
    pub fn new(read: impl Fn() -> T + Send + Sync + 'static) -> View<T> {
        View(Arc::new(read))
    }

    /// The value now.
    pub fn get(&self) -> T {
        (self.0)()
    }
}

impl<T: Clone + Send + Sync + 'static> View<T> {
    /// A view of a value that never changes (tests, and the time before anything is published).
    pub fn fixed(value: T) -> View<T> {
        View::new(move || value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_what_is_published_now() {
        let (tx, rx) = tokio::sync::watch::channel(1);
        let view = View::new(move || *rx.borrow());
        assert_eq!(view.get(), 1);
        tx.send_replace(2);
        assert_eq!(view.clone().get(), 2);
        assert_eq!(View::fixed("x").get(), "x");
    }
}
