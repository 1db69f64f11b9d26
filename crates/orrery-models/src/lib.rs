//! orrery-models
