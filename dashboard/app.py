"""iotpipe dashboard: entry script.

    streamlit run dashboard/app.py      (or dashboard/run.sh --url postgresql://... --port 8501)

Pages: Operations (live sensors and alerts), Analytics (warehouse history), System
(pipeline health). Configuration: IOTPIPE_DASHBOARD_URL or .streamlit/secrets.toml.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from dashboard import ui  # noqa: E402

st.set_page_config(page_title="iotpipe", page_icon=":thermometer:", layout="wide")

HERE = os.path.dirname(os.path.abspath(__file__))
pages = [
    st.Page(
        "pages/operations.py",
        title="Operations",
        icon=":material/sensors:",
        url_path="operations",
        default=True,
    ),
    st.Page(
        "pages/analytics.py",
        title="Analytics",
        icon=":material/insights:",
        url_path="analytics",
    ),
    st.Page(
        "pages/system.py",
        title="System",
        icon=":material/monitor_heart:",
        url_path="system",
    ),
]
page = st.navigation(pages)
ui.sidebar()
page.run()
