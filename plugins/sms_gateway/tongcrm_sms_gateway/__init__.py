"""The sms_gateway plugin for tongcrm."""
