//! A stand-in for the Cloudera AI (CML) API v2 (harness only; NOT the real service).
