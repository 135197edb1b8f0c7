"""The {{service}} service: event handlers run by `microkit up` in consumer processes."""
