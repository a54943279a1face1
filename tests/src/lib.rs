//! Shared test harness lives in tests/tests/common.
