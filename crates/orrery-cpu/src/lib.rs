//! orrery-cpu
