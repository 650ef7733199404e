"""IEEE 2030.5 (CSIP / CSIP-AUS 1.2) client for the LDC role: discovery and polling of the utility
server, its DERControls into the core as LDC envelopes and overrides, and the site's reports back.

`model` holds the plain types the parts share; `codec` wraps envoy-schema (the only module that imports
it) behind the CSIP-AUS namespace guard; `identity` the certificate's LFDI/SFDI and the TLS context;
`schedule` decides, as plain functions of time, which control is in force per quantity and which
Responses are due; `instructions` turns that into the core's LDC messages.
"""
