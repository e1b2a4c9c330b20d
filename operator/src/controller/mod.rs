//! The two controllers, their shared context, and the run loop.

pub mod pool;
