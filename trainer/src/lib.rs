//! trainer crate of deit-pipe.
