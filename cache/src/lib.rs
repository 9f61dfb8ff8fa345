//! cache crate of deit-pipe.
