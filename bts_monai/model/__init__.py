"""The LightningModule, its losses and metrics."""
