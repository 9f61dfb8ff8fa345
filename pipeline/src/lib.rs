//! pipeline crate of deit-pipe.
