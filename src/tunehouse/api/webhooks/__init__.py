"""`/webhook_endpoints`: where this server sends signed notifications of jobs and eval runs ending."""
