from nodeheal.agent.main import main

main()
