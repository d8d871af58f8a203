"""The taobao plugin for tongcrm."""
