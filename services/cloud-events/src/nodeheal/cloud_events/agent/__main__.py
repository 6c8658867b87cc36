from nodeheal.cloud_events.agent.main import main

main()
