//! orrery-runtime
