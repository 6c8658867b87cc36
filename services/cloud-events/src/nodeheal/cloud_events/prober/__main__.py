from nodeheal.cloud_events.prober.main import main

main()
