//! formats crate of deit-pipe.
