//! Live drift and SLO monitoring of each route (issue 8): being written.
