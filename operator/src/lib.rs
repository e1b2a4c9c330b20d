//! FlightPool and ArrowDataset controllers.
