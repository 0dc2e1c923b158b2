"""Bulk dispatch: one command to a selection of the fleet (`dispatches`), created in chunks by
every instance's expander (`expander`). Above the domain packages: it selects with the fleet's
filters (`service.fleet.devices.selection`) and creates with the commands' own dispatch
statement (`service.commands.dispatches`)."""
