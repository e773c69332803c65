from persistor_service.main import main

main()
