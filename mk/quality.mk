##@ Quality
.PHONY: lint
lint: $(SETUP_STAMP) ## ruff check of the whole project
	$(PY) -m ruff check .

.PHONY: clean
clean: down ## Remove built archives and run state (keeps .venv and .cache)
	rm -rf model-archive/build .run
