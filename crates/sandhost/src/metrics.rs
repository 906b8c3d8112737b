//! Prometheus metrics, registered on a registry passed in (never a global). The HTTP adapter encodes
//! the registry on `GET /metrics`.
