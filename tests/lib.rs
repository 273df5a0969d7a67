//! berth-tests has no library code; see e2e/.
