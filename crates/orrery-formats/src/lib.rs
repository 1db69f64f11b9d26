//! orrery-formats
