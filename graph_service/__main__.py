from graph_service.main import main

main()
