//! A stand-in for the Hetzner Cloud API (harness only; NOT the real service).
