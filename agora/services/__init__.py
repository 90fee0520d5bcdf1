"""The service layer: policy and orchestration between handlers and stores."""
