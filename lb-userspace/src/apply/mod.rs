//! Apply (todo)
