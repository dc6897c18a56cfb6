//! `ferry agent`: the update loop around the one-shot commands — when to check
//! ([`window`]), what to run around a switch ([`hooks`]).

pub mod hooks;
pub mod window;
