"""What the gateway and the workers share through Redis: job records, the queue, the catalog of models,
the reaper, webhooks, output storage and the settings. No HTTP and no torch here."""
