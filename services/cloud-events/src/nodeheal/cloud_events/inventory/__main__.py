from nodeheal.cloud_events.inventory.main import main

main()
