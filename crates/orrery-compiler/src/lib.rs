//! orrery-compiler
